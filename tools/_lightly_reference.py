"""Side B of `tools/benchmark_speed.py`: the same work in lightly 1.6 + PyTorch (CPU).

Run by the speed venv's Python (`tools/.speed-venv`, made by `benchmark_speed.py
--setup-venv`), never imported by keras_ssl or its tests. It takes the spec (JSON) as its
only argument, builds the method with lightly's heads, losses, EMA helpers and
transforms around a torchvision ResNet (CIFAR stem: 3x3 stride-1 conv, no max-pool) or a
timm ViT (keras_ssl's ViT uses timm's layout), and answers the commands of
`_speed_common.serve`.

The work mirrors keras_ssl's step: views of one resolution go through the backbone in one
call (keras_ssl's `encode_views`; lightly's examples call the backbone once per view,
which is the same FLOPs with smaller matrix products), teachers run in train mode, the
EMA update averages parameters, not batch-norm buffers.
"""

from __future__ import annotations

import copy
import functools
import json
import os
import sys
import time

import _speed_common as common


@functools.cache
def _declare_torchvision_ops():
    """Declares torchvision's two detection operator schemas when its compiled part cannot
    load beside the CPU build of torch ("operator torchvision::nms does not exist"); the
    models and transforms need neither."""
    import torch

    library = torch.library.Library("torchvision", "DEF")
    library.define("nms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor")
    library.define("qnms(Tensor qdets, Tensor qscores, float iou_threshold) -> Tensor")
    return library


def import_torchvision():
    try:
        import torchvision
    except RuntimeError:
        for name in [m for m in sys.modules if m.startswith("torchvision")]:
            del sys.modules[name]
        _declare_torchvision_ops()
        import torchvision
    return torchvision


def build_backbone(spec):
    from torch import nn

    name = spec["backbone"]
    if name in common.RESNETS:
        import_torchvision()
        from torchvision.models import resnet

        block, blocks, stem = common.RESNETS[name]
        block_class = resnet.Bottleneck if block == "bottleneck" else resnet.BasicBlock
        model = resnet.ResNet(block_class, list(blocks))
        if stem == "cifar":
            model.conv1 = nn.Conv2d(3, 64, kernel_size=3, stride=1, padding=1, bias=False)
            model.maxpool = nn.Identity()
        model.fc = nn.Identity()
        return model
    import_torchvision()  # timm imports torchvision
    from timm.models.vision_transformer import VisionTransformer

    hidden, depth, heads = common.VITS[name]
    model = VisionTransformer(
        img_size=spec["image_size"],
        patch_size=spec["patch_size"],
        embed_dim=hidden,
        depth=depth,
        num_heads=heads,
        mlp_ratio=4.0,
        qkv_bias=True,
        num_classes=0,
        global_pool="token",
        dynamic_img_size=True,  # local crops: position embeddings interpolated
    )
    return model


def _count(parameters):
    return int(sum(p.numel() for p in parameters if p.requires_grad))


class Method:
    """One method's modules, its step on a list of views, and its augmentation."""

    def __init__(self, spec):
        import torch
        from lightly import loss as lightly_loss
        from lightly.models import modules, utils

        self.spec = spec
        self.torch = torch
        self.utils = utils
        method = spec["method"]
        heads = spec["heads"]
        self.backbone = build_backbone(spec)
        features = common.feature_dim(spec["backbone"])
        self.teachers = []  # (student, teacher) pairs
        if method == "simclr":
            # keras_ssl's SimCLR head: Linear -> BN -> ReLU -> Linear (lightly's
            # SimCLRProjectionHead adds an output BN, SimCLR v2's), built from lightly's
            # generic head.
            from lightly.models.modules.heads import ProjectionHead
            from torch import nn

            hidden = heads["hidden_dim"]
            self.head = ProjectionHead(
                [
                    (features, hidden, nn.BatchNorm1d(hidden), nn.ReLU()),
                    (hidden, heads["projection_dim"], None, None),
                ]
            )
            self.criterion = lightly_loss.NTXentLoss(temperature=0.5)
        elif method == "mocov2":
            self.head = modules.MoCoProjectionHead(
                features, heads["hidden_dim"], heads["projection_dim"]
            )
            self.criterion = lightly_loss.NTXentLoss(
                temperature=0.2, memory_bank_size=(spec["queue_size"], heads["projection_dim"])
            ).to(spec.get("device", "cpu"))
        elif method == "byol":
            self.head = modules.BYOLProjectionHead(
                features, heads["hidden_dim"], heads["projection_dim"]
            )
            self.predictor = modules.BYOLPredictionHead(
                heads["projection_dim"], heads["hidden_dim"], heads["projection_dim"]
            )
            self.criterion = lightly_loss.NegativeCosineSimilarity()
        else:
            self.head = modules.DINOProjectionHead(
                features,
                heads["hidden_dim"],
                heads["bottleneck_dim"],
                heads["output_dim"],
                batch_norm=False,
                freeze_last_layer=0,  # the steady state: see benchmark_speed
                norm_last_layer=True,
            )
            self.criterion = lightly_loss.DINOLoss(
                output_dim=heads["output_dim"],
                warmup_teacher_temp=0.04,
                teacher_temp=0.07,
                warmup_teacher_temp_epochs=30,
                student_temp=0.1,
                center_momentum=0.9,
            ).to(spec.get("device", "cpu"))
        if method != "simclr":
            for student in (self.backbone, self.head):
                teacher = self._copy(student, modules)
                utils.deactivate_requires_grad(teacher)
                self.teachers.append((student, teacher))
        self.students = [self.backbone, self.head] + ([self.predictor] if method == "byol" else [])
        self.device = spec.get("device", "cpu")
        for module in self.students + [t for _, t in self.teachers]:
            module.train()
            module.to(self.device)
            if spec["channels_last"]:
                module.to(memory_format=torch.channels_last)
        lr = spec["learning_rate"]
        if method == "dino":
            decay, no_decay = [], []
            for module in self.students:
                for p in module.parameters():
                    if p.requires_grad:
                        (decay if p.ndim > 1 else no_decay).append(p)
            self.optimizer = torch.optim.AdamW(
                [{"params": decay, "weight_decay": 0.04}, {"params": no_decay, "weight_decay": 0}],
                lr=lr,
            )
        else:
            parameters = [p for m in self.students for p in m.parameters() if p.requires_grad]
            self.optimizer = torch.optim.SGD(parameters, lr=lr, momentum=0.9)
        self.step_index = 0

    def _copy(self, student, modules):
        """The teacher: same architecture and weights. A weight-normalised head cannot be
        deep-copied (its computed weight is no graph leaf): built again and loaded."""
        if isinstance(student, modules.DINOProjectionHead):
            heads = self.spec["heads"]
            teacher = modules.DINOProjectionHead(
                common.feature_dim(self.spec["backbone"]),
                heads["hidden_dim"],
                heads["bottleneck_dim"],
                heads["output_dim"],
                batch_norm=False,
                freeze_last_layer=0,  # the steady state: see benchmark_speed
                norm_last_layer=True,
            )
            teacher.load_state_dict(student.state_dict())
            return teacher
        return copy.deepcopy(student)

    def parameters(self):
        return {
            "backbone": _count(self.backbone.parameters()),
            "trainable": sum(_count(m.parameters()) for m in self.students),
        }

    def _encode(self, encoder, views):
        """One backbone call per resolution group, outputs in view order."""
        groups = {}
        for i, view in enumerate(views):
            groups.setdefault(tuple(view.shape[2:]), []).append(i)
        outputs = [None] * len(views)
        for indices in groups.values():
            joined = encoder(self.torch.cat([views[i] for i in indices]))
            for i, part in zip(indices, joined.chunk(len(indices)), strict=True):
                outputs[i] = part
        return outputs

    def loss(self, views):
        torch = self.torch
        method = self.spec["method"]
        if method == "simclr":
            z = self.head(torch.cat(self._encode(self.backbone, views)))
            z0, z1 = z.chunk(2)
            return self.criterion(z0, z1)
        if method == "mocov2":
            query = self.head(self.backbone(views[0]))
            (_, backbone_m), (_, head_m) = self.teachers
            with torch.no_grad():
                key = head_m(backbone_m(views[1]))
            return self.criterion(query, key)
        if method == "byol":
            p = self.predictor(self.head(torch.cat(self._encode(self.backbone, views))))
            (_, backbone_m), (_, head_m) = self.teachers
            with torch.no_grad():
                z = head_m(torch.cat(self._encode(backbone_m, views)))
            p0, p1 = p.chunk(2)
            z0, z1 = z.chunk(2)
            return self.criterion(p0, z1) + self.criterion(p1, z0)
        (_, backbone_t), (_, head_t) = self.teachers
        with torch.no_grad():
            teacher = head_t(torch.cat(self._encode(backbone_t, views[:2]))).chunk(2)
        student = self.head(torch.cat(self._encode(self.backbone, views))).chunk(len(views))
        return self.criterion(list(teacher), list(student), epoch=0)

    def step(self, views):
        torch = self.torch
        spec = self.spec
        method = spec["method"]
        schedule = self.step_index / spec["total_steps"]
        self.optimizer.zero_grad(set_to_none=True)
        with torch.autocast(
            self.device, dtype=torch.bfloat16, enabled=spec["precision"] != "float32"
        ):
            loss = self.loss(views)
        loss.backward()
        if method == "dino":
            self.head.cancel_last_layer_gradients(current_epoch=0)
            for module in self.students:  # DINO clips each parameter's gradient norm
                for p in module.parameters():
                    if p.grad is not None:
                        torch.nn.utils.clip_grad_norm_(p, 3.0)
            decay = self.utils_cosine(schedule, 0.04, 0.4)
            self.optimizer.param_groups[0]["weight_decay"] = decay
        self.optimizer.step()
        if self.teachers:
            if method == "mocov2":
                momentum = 0.999
            else:
                momentum = self.utils_cosine(schedule, 0.996, 1.0)
            for student, teacher in self.teachers:
                self.utils.update_momentum(student, teacher, momentum)
        self.step_index += 1
        return float(loss.detach())

    @staticmethod
    def utils_cosine(fraction, start, end):
        from lightly.utils.scheduler import cosine_schedule

        return cosine_schedule(int(fraction * 1000), 1000, start, end)

    def transform(self):
        """lightly's transform for the method, with keras_ssl's small-image recipe choices
        (no blur at 32 px, CIFAR jitter strength for SimCLR, no normalisation)."""
        from lightly import transforms

        spec = self.spec
        size = spec["image_size"]
        method = spec["method"]
        if method == "simclr":
            return transforms.SimCLRTransform(
                input_size=size, cj_strength=0.5, gaussian_blur=0.0, normalize=None
            )
        if method == "mocov2":
            return transforms.MoCoV2Transform(input_size=size, gaussian_blur=0.0, normalize=None)
        if method == "byol":
            return transforms.BYOLTransform(
                transforms.BYOLView1Transform(input_size=size, gaussian_blur=0.0, normalize=None),
                transforms.BYOLView2Transform(input_size=size, gaussian_blur=0.0, normalize=None),
            )
        return transforms.DINOTransform(
            global_crop_size=size,
            local_crop_size=spec["local_size"],
            n_local_views=spec["local_crops"],
            gaussian_blur=(0.0, 0.0, 0.0),
            normalize=None,
        )


class LightlyWorker:
    def __init__(self, spec):
        self.spec = spec
        self.cores = common.limit_threads(spec["threads"])
        import numpy as np
        import torch

        torch.set_num_threads(spec["threads"])
        torch.manual_seed(spec["seed"])
        device = spec.get("device", "cpu")
        if device == "cuda":
            if not torch.cuda.is_available():
                raise RuntimeError("--device cuda, but this torch sees no GPU (a CPU build?).")
            common.DEVICE_PEAK = lambda: torch.cuda.max_memory_allocated() / 2**20
        self.device = device
        self.np = np
        self.torch = torch
        self.method = Method(spec)
        memory_format = torch.channels_last if spec["channels_last"] else torch.contiguous_format
        self.views = [
            torch.from_numpy(v.transpose(0, 3, 1, 2).copy())
            .to(device)
            .contiguous(memory_format=memory_format)
            for v in common.make_views(spec)
        ]
        self.memory_format = memory_format
        from PIL import Image

        batch = spec["batch_size"]
        images = common.make_images(spec, batch * max(1, 64 // max(batch, 1) + 1))
        self.pil_images = [Image.fromarray(image) for image in images]
        self.transform = (
            self.method.transform() if set(spec["phases"]) & {"augment", "fit"} else None
        )

    def _step(self):
        self.method.step(self.views)

    def first_step(self):
        return common.first_step(self._step, self.spec["warmup"])

    def flops(self):
        """FLOPs of one step's forward + backward on the real batch (torch's counter)."""
        if not self.spec["flops"]:
            return None
        from torch.utils.flop_counter import FlopCounterMode

        method = self.method
        with FlopCounterMode(display=False) as counter:
            method.optimizer.zero_grad(set_to_none=True)
            method.loss(self.views).backward()
        method.optimizer.zero_grad(set_to_none=True)
        return int(counter.get_total_flops())

    def versions(self):
        import lightly
        import numpy
        import torch

        torchvision = import_torchvision()
        versions = {
            "lightly": lightly.__version__,
            "torch": torch.__version__,
            "torchvision": torchvision.__version__,
            "numpy": numpy.__version__,
        }
        if self.spec["backbone"] in common.VITS:
            import timm

            versions["timm"] = timm.__version__
        return versions

    def step(self, n):
        times, faults = common.timed(self._step, n)
        return {"times": times, "minor_faults_per_step": faults}

    def _batch(self, images):
        """Augments `images` one by one (as lightly's DataLoader does) and collates."""
        per_image = [self.transform(image) for image in images]
        return [
            self.torch.stack([views[k] for views in per_image])
            .to(self.device)
            .contiguous(memory_format=self.memory_format)
            for k in range(len(per_image[0]))
        ]

    def augment(self, n):
        batch = self.spec["batch_size"]
        images = self.pil_images[:batch]
        times, _ = common.timed(lambda: self._batch(images), n)
        return {"times": times, "images_per_call": batch}

    def fit(self, n):
        """`n` steps of augmentation (in this process, as a DataLoader with no workers)
        and training; steady-state seconds per step from the gaps between step ends."""
        batch = self.spec["batch_size"]
        count = len(self.pil_images)
        marks = []
        start = time.perf_counter()
        for i in range(n):
            first = (i * batch) % count
            images = (self.pil_images * 2)[first : first + batch]
            self.method.step(self._batch(images))
            marks.append(time.perf_counter())
        total = time.perf_counter() - start
        steady = (marks[-1] - marks[0]) / (n - 1) if n > 1 else total / n
        return {"seconds_per_step": steady, "call_seconds_per_step": total / n}


def main():
    spec = json.loads(sys.argv[1])
    try:
        import_torchvision()  # before lightly imports it
        worker = LightlyWorker(spec)
        first = worker.first_step()
        flops = worker.flops()
        common.reply(
            {
                "ready": True,
                "side": "lightly",
                "parameters": worker.method.parameters(),
                "first_step_s": first,
                "flops_per_step": flops,
                "versions": worker.versions(),
                "jit_compile": False,
                "device": worker.device,
                "cores": worker.cores,
                "pid": os.getpid(),
                **common.usage(),
            }
        )
    except Exception as error:
        common.fail(error)
    common.serve(worker)


if __name__ == "__main__":
    main()
