"""Where preset files come from: a Hugging Face repository (through the local cache) or a
local directory; both hand back local paths of file names that cannot leave their root."""

import hashlib
import os
import re
import warnings
from pathlib import Path

from keras_ssl.presets.errors import PresetError
from keras_ssl.presets.registry import check_relative

HF_PREFIX = "hf://"
_REPO_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.\-]*/[A-Za-z0-9][A-Za-z0-9_.\-]*$")
_SHA_PATTERN = re.compile(r"^[0-9a-f]{40}$")
_warned_unpinned = set()


def parse_hf_handle(handle):
    """``"hf://org/name[@revision]"`` -> ``(repo_id, revision or None)``."""
    body = handle[len(HF_PREFIX) :]
    repo, _, revision = body.partition("@")
    if not is_repo_id(repo):
        raise PresetError(
            f"{handle!r} is not a Hugging Face handle: expected 'hf://org/name' or "
            "'hf://org/name@revision' (revision: a commit sha, tag or branch)."
        )
    return repo, (revision or None)


def is_repo_id(text):
    """Whether ``text`` reads as a Hugging Face repository id, ``"org/name"``."""
    return bool(_REPO_PATTERN.match(text)) and ".." not in text


def is_pinned(revision):
    return bool(revision) and bool(_SHA_PATTERN.match(revision))


def sha256_of(path, chunk=1 << 20):
    digest = hashlib.sha256()
    with open(path, "rb") as file:
        while block := file.read(chunk):
            digest.update(block)
    return digest.hexdigest()


_PUBLISHED_ADVICE = (
    "The file is corrupt, truncated or not the published one. Delete it from the cache (or pass "
    "force_download=True) and load again; if it persists the source changed: pin the "
    "revision the card names."
)


def verify_sha256(path, expected, what, advice=_PUBLISHED_ADVICE):
    """Raises PresetError when ``path``'s sha256 differs from ``expected`` (None: no check);
    the message ends with ``advice``."""
    if not expected:
        return
    actual = sha256_of(path)
    if actual != expected.lower():
        raise PresetError(
            f"sha256 mismatch for {what} ({path}): expected {expected}, got {actual}. {advice}"
        )


class LocalSource:
    """Files of a local preset directory.

    A file may be a symbolic link to a regular file elsewhere, as in the snapshot folders
    of the Hugging Face cache (``huggingface_hub.snapshot_download``), whose files link
    to ``../../blobs/``. File names themselves cannot leave the directory
    (:func:`check_relative`).
    """

    def __init__(self, root):
        self.root = Path(root).resolve()
        self.description = f"directory {str(root)!r}"

    def get(self, filename, required=True):
        check_relative(filename, self.description)  # no '..': the name stays inside root
        path = self.root / filename  # not resolved: a snapshot's links point outside root
        if path.is_symlink() and not path.is_file():
            raise PresetError(
                f"{self.description}: {filename!r} is a symbolic link to "
                f"{os.readlink(path)!r}, which is not a file (a broken link?). Restore the "
                "file it points to, or download or copy the preset again."
            )
        if not path.is_file():
            if required:
                present = sorted(p.name for p in self.root.iterdir()) if self.root.is_dir() else []
                raise PresetError(
                    f"{self.description} has no file {filename!r} (it has {present}). A preset "
                    "directory is made by keras_ssl.save_to_preset or tools/convert_checkpoint.py."
                )
            return None
        return str(path)


class HubSource:
    """Files of a Hugging Face model repository at one revision, through the HF cache.

    ``cache_dir`` and ``local_files_only`` default to huggingface_hub's own settings
    (``HF_HUB_CACHE``, ``HF_HUB_OFFLINE``).
    """

    def __init__(
        self,
        repo,
        revision=None,
        cache_dir=None,
        local_files_only=None,
        force_download=False,
        token=None,
    ):
        self.repo = repo
        self.revision = revision or "main"
        self.cache_dir = cache_dir
        self.local_files_only = local_files_only
        self.force_download = force_download
        self.token = token
        self.description = f"hf://{repo}@{self.revision}"
        if not is_pinned(self.revision) and self.description not in _warned_unpinned:
            _warned_unpinned.add(self.description)
            warnings.warn(
                f"{self.description} is not pinned to a commit: the files may change under you. "
                "Pin it with 'hf://org/name@<commit sha>' (or revision=...).",
                stacklevel=3,
            )

    def _offline(self):
        if self.local_files_only is not None:
            return bool(self.local_files_only)
        from huggingface_hub import constants

        return bool(constants.HF_HUB_OFFLINE)

    def get(self, filename, required=True):
        check_relative(filename, self.description)
        import huggingface_hub
        from huggingface_hub import errors

        offline = self._offline()
        try:
            return huggingface_hub.hf_hub_download(
                self.repo,
                filename,
                revision=self.revision,
                cache_dir=self.cache_dir,
                local_files_only=offline,
                force_download=self.force_download,
                token=self.token,
                library_name="keras_ssl",
            )
        except errors.LocalEntryNotFoundError:
            # Not in the cache, and downloads are off or the Hub did not answer. (A subclass of
            # EntryNotFoundError, so it comes first.) Offline, an optional file missing from a
            # cached snapshot is taken as absent; online, the Hub did not answer, and an
            # optional file (a preset's optimizer state) must not silently go missing.
            if not required and offline and self._cached_snapshot():
                return None
            if offline:
                raise self._offline_error(filename) from None
            raise self._unreachable_error(filename) from None
        except errors.EntryNotFoundError:
            # RemoteEntryNotFoundError (online), or not in the local snapshot (offline).
            if not required:
                return None
            if offline and not self._cached_snapshot():
                raise self._offline_error(filename) from None
            raise PresetError(
                f"{self.description} has no file {filename!r}. Check the file names in the "
                "preset card, or the repository's contents at that revision."
            ) from None
        except errors.RevisionNotFoundError:
            raise PresetError(
                f"{self.description}: the revision {self.revision!r} does not exist. Use a "
                "commit sha, tag or branch of the repository."
            ) from None
        except errors.RepositoryNotFoundError:
            raise PresetError(
                f"Hugging Face repository {self.repo!r} not found (or private: log in with "
                "`hf auth login` or pass token=...)."
            ) from None
        except errors.HfHubHTTPError as error:
            raise PresetError(
                f"{self.description}: download of {filename!r} failed: {error}"
            ) from error

    def _cached_snapshot(self):
        from huggingface_hub import constants

        cache = Path(self.cache_dir or constants.HF_HUB_CACHE)
        folder = cache / ("models--" + self.repo.replace("/", "--"))
        if is_pinned(self.revision):
            return (folder / "snapshots" / self.revision).is_dir()
        return (folder / "refs" / self.revision).is_file()

    def _unreachable_error(self, filename):
        from huggingface_hub import constants

        cache = self.cache_dir or constants.HF_HUB_CACHE
        return PresetError(
            f"{filename!r} of {self.description} could not be downloaded (the Hugging Face Hub "
            f"did not answer: no network?) and is not in the cache ({cache}). Check the "
            f"connection, or fetch it elsewhere with `hf download {self.repo} --revision "
            f"{self.revision}` and copy the cache here (HF_HUB_CACHE, or cache_dir=...)."
        )

    def _offline_error(self, filename):
        from huggingface_hub import constants

        cache = self.cache_dir or constants.HF_HUB_CACHE
        return PresetError(
            f"{filename!r} of {self.description} is not in the Hugging Face cache ({cache}) and "
            "downloads are off (HF_HUB_OFFLINE=1 or local_files_only=True). Run once with network "
            f"access, or fetch it elsewhere with `hf download {self.repo} --revision "
            f"{self.revision}` and copy the cache here (HF_HUB_CACHE, or cache_dir=...)."
        )
