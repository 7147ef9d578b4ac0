"""Convert every registered preset and publish it as a Keras-native preset on the Hub.

For each card in ``presets/`` (or those named with ``--only``):

1. resolve the source revision to a commit sha (``HfApi.model_info``) and download the
   files through the Hugging Face cache (or the card's URL for torch-pickle sources);
2. record the revision sha and the files' sha256 (written back into the card unless
   ``--dry-run``);
3. convert: ``keras_ssl.from_preset`` for safetensors sources, ``tools/convert_checkpoint.py``
   for torch pickles; cards without a converter are skipped with the reason;
4. check: a forward pass on a test image is finite and has the card's feature width,
   and the saved preset reloads to the same output;
5. ``keras_ssl.save_to_preset`` into ``--output-dir/<name>`` and, unless ``--dry-run``,
   ``keras_ssl.upload_preset(f"hf://{--namespace}/<name>", ...)``.

Needs network access (except with ``--offline``, which uses the cache only) and, to
upload, a Hugging Face token with write access (``hf auth login``).

Examples:

    python tools/publish_presets.py --dry-run --only dino_vits16
    python tools/publish_presets.py --namespace keras-ssl --output-dir /tmp/presets
"""

from __future__ import annotations

import argparse
import json
import sys
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
CARDS = ROOT / "presets"


def resolve_revision(repo, revision, offline):
    """The commit sha of ``repo@revision`` (from the cache's refs when offline)."""
    from huggingface_hub import HfApi, constants

    from keras_ssl.presets.sources import is_pinned

    if is_pinned(revision):
        return revision
    if offline:
        ref = Path(constants.HF_HUB_CACHE) / f"models--{repo.replace('/', '--')}" / "refs"
        return (ref / (revision or "main")).read_text().strip()
    return HfApi().model_info(repo, revision=revision or "main").sha


def download_url(url, folder):
    folder.mkdir(parents=True, exist_ok=True)
    target = folder / url.rsplit("/", 1)[-1]
    if not target.exists():
        print(f"  downloading {url}")
        urllib.request.urlretrieve(url, target)  # noqa: S310 (https URLs from our cards)
    return target


def check_model(model, card, reloaded=None):
    import keras
    import numpy as np

    size = card["preprocessing"].get("crop_size") or 224
    image = np.random.default_rng(0).uniform(size=(1, size, size, 3)).astype("float32")
    out = keras.ops.convert_to_numpy(model(image))
    if not np.all(np.isfinite(out)) or out.shape[-1] != model.output_dim:
        raise RuntimeError(f"{card['name']}: bad output {out.shape}")
    if reloaded is not None:
        again = keras.ops.convert_to_numpy(reloaded(image))
        np.testing.assert_allclose(again, out, rtol=1e-6, atol=1e-6)
    return out


def publish_one(card, args, record):
    import keras_ssl
    from keras_ssl.presets.sources import sha256_of

    name, source = card["name"], card["source"]
    out_dir = Path(args.output_dir) / name
    if not source.get("converter"):
        print(f"- {name}: skipped (no converter: {source.get('note', source['format'])})")
        return
    if source["format"] == "safetensors":
        revision = resolve_revision(source["repo"], source.get("revision"), args.offline)
        record.update(revision=revision)
        model, preprocessing = keras_ssl.from_preset(
            name, revision=revision, local_files_only=args.offline or None
        )
        import huggingface_hub

        hashes = {}
        for role, filename in (source.get("files") or {}).items():
            if filename and role == "weights":
                path = huggingface_hub.hf_hub_download(
                    source["repo"], filename, revision=revision, local_files_only=args.offline
                )
                hashes[filename] = sha256_of(path)
        record.update(sha256=hashes)
        metadata = {
            "method": card.get("method"),
            "license": card["license"],
            "paper": card.get("paper"),
            "scores": card.get("scores", {}),
            "source": {**source, "revision": revision, "sha256": hashes},
            "preset": name,
        }
        keras_ssl.save_to_preset(model, out_dir, metadata, preprocessing)
    else:
        spec = importlib_tool("convert_checkpoint")
        if source.get("url"):
            checkpoint = download_url(source["url"], Path(args.output_dir) / "_downloads")
        else:
            import huggingface_hub

            revision = resolve_revision(source["repo"], source.get("revision"), args.offline)
            record.update(revision=revision)
            filename = source["files"].get("weights") or _only_checkpoint(source["repo"], revision)
            checkpoint = Path(
                huggingface_hub.hf_hub_download(source["repo"], filename, revision=revision)
            )
        record.update(sha256={checkpoint.name: sha256_of(checkpoint)})
        spec.main(["--card", name, "--checkpoint", str(checkpoint), "--output", str(out_dir)])
        model, _ = keras_ssl.from_preset(out_dir)
    reloaded, _ = keras_ssl.from_preset(out_dir)
    check_model(model, card, reloaded)
    target = f"hf://{args.namespace}/{name}"
    if args.dry_run:
        print(f"- {name}: converted to {out_dir}; would upload to {target}; {record}")
        return
    keras_ssl.upload_preset(target, out_dir)
    print(f"- {name}: uploaded to {target}; {record}")


def _only_checkpoint(repo, revision):
    from huggingface_hub import HfApi

    files = [f for f in HfApi().list_repo_files(repo, revision=revision) if f.endswith(".pth")]
    if len(files) != 1:
        raise RuntimeError(f"{repo}: expected one .pth file, found {files}; set it in the card.")
    return files[0]


def importlib_tool(name):
    import importlib.util

    spec = importlib.util.spec_from_file_location(name, ROOT / "tools" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def write_record(card_path, record):
    """Pins the card: its revision sha and the sha256 of its files."""
    card = json.loads(card_path.read_text())
    if "revision" in record:
        card["source"]["revision"] = record["revision"]
        card["source"].pop("revision_note", None)
    if record.get("sha256"):
        card["source"].setdefault("sha256", {}).update(record["sha256"])
    card_path.write_text(json.dumps(card, indent=2) + "\n")


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--namespace", default="keras-ssl", help="Hub user or organisation")
    parser.add_argument("--output-dir", default="presets_out")
    parser.add_argument("--only", nargs="*", help="preset names (default: every card)")
    parser.add_argument("--cards-dir", type=Path, default=CARDS)
    parser.add_argument("--dry-run", action="store_true", help="no upload, no card rewrite")
    parser.add_argument("--offline", action="store_true", help="use the Hugging Face cache only")
    args = parser.parse_args(argv)

    from keras_ssl.presets import registry

    if args.cards_dir != CARDS:
        registry.add_cards_dir(args.cards_dir)
    names = args.only or sorted(p.stem for p in args.cards_dir.glob("*.json"))
    failures = []
    for name in names:
        card = registry.get_card(name)
        record = {}
        try:
            publish_one(card, args, record)
        except Exception as error:  # report every preset, then fail
            failures.append(name)
            print(f"- {name}: FAILED: {type(error).__name__}: {error}")
            continue
        if record and not args.dry_run:
            write_record(args.cards_dir / f"{name}.json", record)
    if failures:
        print(f"{len(failures)} failed: {failures}")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
