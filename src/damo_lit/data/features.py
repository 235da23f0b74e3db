"""The frozen-encoder feature cache: tower outputs computed once, read back instead of decoding.

The towers never change while they are frozen, and decoding plus encoding costs more than a
training step of everything after them. `damo-cache` (damo_lit.cli.cache) runs the towers once
over every video of a dataset and writes what `encoder_features` returns (of the towers alone,
`build_encoders`), plus each video's frame / segment times, masks and duration, into
safetensors shards (never pickle):

    DIR/manifest.json          format, status (partial | complete), the encoder signature (the
                               model-config keys that decide the towers' outputs, and a digest
                               of the tower weights), decode parameters, the full model config
                               for the record, counts
    DIR/shards/00000.safetensors  rows of up to `shard_size` videos; metadata "keys" names them
    DIR/index.json             shard -> video keys, and the videos that failed to decode

A shard is written atomically (temporary file, then rename), so an interrupted run leaves only
finished shards, and a rerun encodes only the videos no shard holds. A video is named by its
key: `<source label>/<record video path>` (the data config's source name and the path as the
annotation file states it), so the cache follows the data when it moves. Two sets with the same
file names have the same keys, so each row also records its file's stamp (size, modification
time, SHA-256; shard metadata "files", index.json "files"): a rerun re-encodes a video whose file
changed (the newest shard's row wins; a shard left with no current row is deleted), and training
refuses a cache whose videos changed since (`FeatureStore.check_unchanged`).

The datamodule (`data.features=DIR`) reads rows by key (`FeatureStore`) and yields the cached
keys `vision_global`, `vision_local`, `audio_global`, `audio_local` instead of `frames` /
`audio_mel`; every other key of the batch contract is unchanged. It refuses a cache made with
another encoder signature or other decode parameters, and a model config whose towers train.
The tower weights themselves are checked by the training run once its model exists
(`check_tower_weights`): a cache made with the pretrained towers does not serve a run whose
towers came from a stage checkpoint (the tiny model trains its random towers in stages 1-2;
`damo-cache init_from=STAGE_DIR` encodes with those).
"""

from __future__ import annotations

import hashlib
import json
import os
import signal
import warnings
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Iterable, Mapping, Sequence

import numpy as np
import torch

from damo_lit.data.collection import Sample
from damo_lit.data.decode import DecodeParams
from damo_lit.models.config import MEMORY_ONLY_TOWER_KEYS

FORMAT = "damo-features-v1"
MANIFEST = "manifest.json"
INDEX = "index.json"
SHARD_DIR = "shards"
FEATURE_KEYS = ("vision_global", "vision_local", "audio_global", "audio_local")
ROW_KEYS = (*FEATURE_KEYS, "frame_times", "frame_mask", "audio_times", "audio_mask", "has_audio", "duration")
# Model-config keys of a tower that do not change what it outputs.
# Tower keys that leave the cached rows as they are: whether the tower trains, and those that change
# memory only (models.config.MEMORY_ONLY_TOWER_KEYS). A cache made before a key existed stays valid.
NOT_IN_SIGNATURE = ("trainable", *MEMORY_ONLY_TOWER_KEYS)
# The signature entry that holds the digest of the tower weights the cache was made with (checked
# against the training run's model, not against its config).
TOWER_WEIGHTS = "tower_weights"


class FeatureCacheError(ValueError):
    """A feature cache that cannot serve this run; the message names the folder and what differs."""


def ignore_interrupts(*_: Any) -> None:
    """Worker processes (a DataLoader's worker_init_fn) leave Ctrl-C to the parent, which stops
    them and says so in one line: without this each worker prints its own KeyboardInterrupt."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)


def file_stamp(path: str | Path) -> dict[str, Any]:
    """What identifies a video file's content, recorded beside its cached row: size and
    modification time (one stat compares them) and a SHA-256 of the bytes (what decides when only
    the time differs, e.g. after a copy that did not keep times)."""
    stat = Path(path).stat()
    return {"size": stat.st_size, "mtime_ns": stat.st_mtime_ns, "sha256": _file_sha256(path)}


def _file_sha256(path: str | Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def current_stamp(stamp: Mapping[str, Any], path: str | Path) -> dict[str, Any] | None:
    """`stamp` as it stands for the file at `path` now: None when the file is another one; the
    stamp with the file's time when only the time moved (a copy that did not keep times: the
    digest decided), so that the next check is one stat again. A missing file is not changed:
    training from a cache needs no videos, and what was cached is all there is to go by."""
    try:
        stat = Path(path).stat()
    except OSError:
        return dict(stamp)
    if stat.st_size != stamp.get("size"):
        return None
    if stat.st_mtime_ns == stamp.get("mtime_ns"):
        return dict(stamp)
    return {**stamp, "mtime_ns": stat.st_mtime_ns} if _file_sha256(path) == stamp.get("sha256") else None


def file_changed(stamp: Mapping[str, Any], path: str | Path) -> bool:
    """Whether the file at `path` is not the one `stamp` recorded (`current_stamp`)."""
    return current_stamp(stamp, path) is None


def video_key(sample: Sample) -> str:
    """The cache key of a sample's video: `<source label>/<video path as the record states it>`."""
    return f"{sample.source}/{sample.record.video}"


def encoder_signature(model_cfg: Mapping[str, Any], pooled: bool = False) -> dict[str, Any]:
    """What decides the cached rows: the tower configs (less `trainable`), the frame and segment
    counts and the seed (random-init towers); with `pooled` (local tokens stored already pooled to
    the residual's L' tokens) also those token counts and the feature norm, which pooling assumes."""

    def tower(name: str) -> dict[str, Any] | None:
        part = model_cfg.get(name)
        if part is None:
            return None
        return {k: _plain(v) for k, v in dict(part).items() if k not in NOT_IN_SIGNATURE}

    return {
        "num_frames": model_cfg.get("num_frames"),
        "num_audio_segments": model_cfg.get("num_audio_segments"),
        "seed": model_cfg.get("seed"),
        "vision": tower("vision"),
        "audio": tower("audio"),
        "pooled_local": _pooled_local(model_cfg) if pooled else None,
    }


def tower_digest(model: torch.nn.Module) -> str:
    """sha256 over the names, dtypes, shapes and bytes of a DaMO model's vision and audio tower
    tensors: what the cached rows depend on besides the config."""
    import hashlib

    digest = hashlib.sha256()
    for name in ("vision", "audio"):
        tower = getattr(model, name, None)
        if tower is None:
            continue
        for key, tensor in sorted(tower.state_dict().items()):
            tensor = tensor.detach().to("cpu").contiguous()
            digest.update(f"{name}.{key}:{tensor.dtype}:{tuple(tensor.shape)};".encode())
            digest.update(tensor.reshape(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


def config_signature(signature: Mapping[str, Any]) -> dict[str, Any]:
    """A cache's signature without the tower-weights digest: what a model config can be compared to."""
    return {k: v for k, v in signature.items() if k != TOWER_WEIGHTS}


def check_tower_weights(signature: Mapping[str, Any], model: torch.nn.Module, where: str) -> None:
    """Refuse a cache whose rows came from other tower weights than `model`'s (a signature
    without a digest, written before digests existed, is not checked)."""
    made = signature.get(TOWER_WEIGHTS)
    if made is None:
        return
    if made != tower_digest(model):
        raise FeatureCacheError(
            f"{where} was made with other tower weights than this run's model has (its manifest's "
            "info.towers_from says where they came from). A stage that starts from a checkpoint holding trained "
            "towers (stage.init_from) needs a cache made from the same checkpoint: damo-cache "
            "init_from=THAT_STAGE_DIR out=NEW_DIR; a run on the pretrained towers needs one made without init_from"
        )


def _pooled_local(model_cfg: Mapping[str, Any]) -> dict[str, Any]:
    residual = model_cfg.get("residual") or {}
    return {"video_tokens": residual.get("video_tokens"), "audio_tokens": residual.get("audio_tokens"),
            "feature_norm": residual.get("feature_norm", "none")}


def trainable_towers(model_cfg: Mapping[str, Any]) -> list[str]:
    """The model-config keys of towers that train (`model.vision.trainable` ...): none may, with a cache."""
    out = []
    for name in ("vision", "audio"):
        part = model_cfg.get(name) or {}
        if part.get("trainable") and part.get("enabled", True):
            out.append(f"model.{name}.trainable")
    return out


def signature_diff(made: Mapping[str, Any], wanted: Mapping[str, Any], prefix: str = "model") -> list[str]:
    """Dotted keys whose values differ between two signatures, as 'key: cache X, this run Y'.
    Tower keys of NOT_IN_SIGNATURE are no difference, also where an older cache recorded them."""
    diffs: list[str] = []
    for key in sorted(set(made) | set(wanted)):
        a, b = made.get(key), wanted.get(key)
        name = f"{prefix}.{key}"
        if key in NOT_IN_SIGNATURE and prefix.endswith((".vision", ".audio")):
            continue
        if isinstance(a, Mapping) and isinstance(b, Mapping):
            diffs += signature_diff(a, b, name)
        elif a != b and not _same_file(a, b):
            diffs.append(f"{name}: cache {a!r}, this run {b!r}")
    return diffs


def _same_file(a: Any, b: Any) -> bool:
    """Two path strings naming one existing file or folder (through a symlink, or relative and
    absolute): a tower loaded from a linked checkout is the same tower. Its weights are checked
    apart, by digest (check_tower_weights)."""
    if not (isinstance(a, str) and isinstance(b, str)):
        return False
    try:
        return os.path.samefile(a, b)
    except OSError:  # either one missing: compare as the strings they are
        return False


def _plain(value: Any) -> Any:
    if isinstance(value, Mapping):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    return value


@dataclass
class CachedFeatures:
    """One video's row of the cache: the batch-contract media keys of a cached-feature batch."""

    # The media fields the collate stacks, and the dtype each becomes (None: as stored).
    BATCH_FIELDS = {
        "vision_global": None, "vision_local": None, "audio_global": None, "audio_local": None,
        "frame_times": torch.float32, "frame_mask": torch.bool, "audio_times": torch.float32,
        "audio_mask": torch.bool,
    }  # fmt: skip

    vision_global: torch.Tensor  # (N, Dv)
    vision_local: torch.Tensor  # (N, P, Dv)
    audio_global: torch.Tensor | None  # (M, Da)
    audio_local: torch.Tensor | None  # (M, Q, Da)
    frame_times: torch.Tensor  # (N,)
    frame_mask: torch.Tensor  # (N,)
    audio_times: torch.Tensor  # (M,)
    audio_mask: torch.Tensor  # (M,)
    has_audio: bool
    duration: float


@dataclass
class FeatureRow:
    """What the cache writer receives per video: its key and one row of each tensor."""

    key: str
    tensors: dict[str, torch.Tensor]
    stamp: dict[str, Any] | None = None  # `file_stamp` of the video file the row was encoded from


@dataclass
class CacheReport:
    """What a `damo-cache` run did: videos encoded now, found in finished shards, and failed."""

    out: str
    encoded: int = 0
    reused: int = 0
    bad: dict[str, str] = field(default_factory=dict)
    shards: int = 0
    videos: int = 0
    bytes: int = 0  # the shard files' size on disk


def read_json(path: Path) -> dict[str, Any]:
    """A cache's JSON file; FeatureCacheError naming it when it cannot be read."""
    try:
        return json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as err:
        raise FeatureCacheError(f"{path}: cannot read it ({err})") from None


def write_json(path: Path, payload: Mapping[str, Any]) -> None:
    """Write atomically (a temporary file renamed over it): a crash never leaves half a file."""
    tmp = path.with_name(f"{path.name}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps(payload, indent=1, sort_keys=True))
    os.replace(tmp, path)


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def read_manifest(path: Path, fmt: str, key: str, command: str) -> dict[str, Any]:
    """A folder's manifest of format `fmt`; errors name the config `key` and the `command` that makes it."""
    if not path.is_file():
        raise FeatureCacheError(f"{key}={path.parent}: no {path.name} there; make it with `{command}`")
    manifest = read_json(path)
    if manifest.get("format") != fmt:
        raise FeatureCacheError(f"{path}: format {manifest.get('format')!r}, expected {fmt!r}")
    return manifest


def _shard_header(path: Path) -> tuple[list[str], list[dict[str, Any] | None]]:
    """The video keys a finished shard holds and their file stamps (None in shards written before
    stamps were), read from its header only."""
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as handle:
        metadata = handle.metadata() or {}
    keys = list(json.loads(metadata["keys"]))
    stamps = json.loads(metadata["files"]) if "files" in metadata else [None] * len(keys)
    return keys, stamps


def _shard_number(name: str) -> int:
    return int(Path(name).stem)


class FeatureCacheWriter:
    """Writes a cache folder shard by shard; a rerun into the same folder continues it.

    Args:
        root: the cache folder.
        signature: `encoder_signature(model_cfg, ...)`; a folder made with another one is refused.
        params: the decode parameters the rows were decoded with.
        shard_size: videos per shard.
        info: anything else to record in the manifest (the full model config, the data name).
    """

    def __init__(
        self,
        root: str | Path,
        signature: Mapping[str, Any],
        params: DecodeParams,
        shard_size: int = 64,
        info: Mapping[str, Any] | None = None,
    ) -> None:
        if shard_size < 1:
            raise ValueError(f"shard_size must be >= 1, got {shard_size}")
        self.root = Path(root)
        self.signature = _plain(dict(signature))
        self.params = params
        self.shard_size = int(shard_size)
        self.info = _plain(dict(info or {}))
        (self.root / SHARD_DIR).mkdir(parents=True, exist_ok=True)
        manifest_path = self.root / MANIFEST
        if manifest_path.is_file():
            old = read_json(manifest_path)
            problems = signature_diff(old.get("signature", {}), self.signature)
            if old.get("decode") != _plain(asdict(params)):
                problems.append(f"decode parameters: {decode_diff(old.get('decode'), params)}")
            stored, now = (old.get("info") or {}).get("dtype"), self.info.get("dtype")
            if "dtype" in (old.get("info") or {}) and stored != now:  # shards of two dtypes would mix
                problems.append(f"dtype: cache {stored}, this run {now}")
            if problems:
                raise FeatureCacheError(
                    f"{self.root} holds a feature cache made with another config ({'; '.join(problems)}); "
                    "write to another folder (out=...) or delete this one"
                )
        self.shards: dict[str, list[str]] = {}
        self.stamps: dict[str, dict[str, Any] | None] = {}  # key -> its newest row's file stamp
        for path in sorted((self.root / SHARD_DIR).glob("*.safetensors"), key=lambda p: _shard_number(p.name)):
            try:
                keys, stamps = _shard_header(path)
            except Exception as err:  # noqa: BLE001 - a torn shard (cannot happen with rename, but disks lie)
                raise FeatureCacheError(f"{path}: unreadable shard ({err}); delete it and rerun") from None
            self.shards[path.name] = keys
            self.stamps.update(zip(keys, stamps))
        self.bad: dict[str, str] = {}
        self._write_manifest("partial", {})

    def _write_manifest(self, status: str, splits: Mapping[str, int]) -> None:
        write_json(self.root / MANIFEST, {
            "format": FORMAT, "status": status, "signature": self.signature, "decode": _plain(asdict(self.params)),
            "shard_size": self.shard_size, "splits": dict(splits), "info": self.info,
            "videos": len(self.stamps), "bad": len(self.bad),
        })  # fmt: skip

    def done(self, files: Mapping[str, str] | None = None) -> set[str]:
        """Keys already in a finished shard; with `files` (key -> video path), only those whose
        file is unchanged since: a row without a stamp (an older cache's) is not trusted."""
        if files is None:
            return set(self.stamps)
        done = set()
        for key, path in files.items():
            stamp = self.stamps.get(key)
            now = current_stamp(stamp, path) if stamp is not None else None
            if now is not None:
                self.stamps[key] = now  # a moved time is recorded in index.json: training then only stats
                done.add(key)
        return done

    def write_shard(self, rows: Sequence[FeatureRow]) -> Path:
        """Stack the rows into the next shard file (atomic: a crash leaves no partial shard)."""
        from safetensors.torch import save_file

        if not rows:
            raise ValueError("write_shard needs at least one row")
        names = sorted(rows[0].tensors)
        for row in rows[1:]:
            if sorted(row.tensors) != names:
                raise ValueError(f"video {row.key}: tensors {sorted(row.tensors)} differ from {names}")
        tensors = {name: torch.stack([row.tensors[name].detach().cpu() for row in rows]).contiguous()
                   for name in names}  # fmt: skip
        number = 1 + max((int(Path(n).stem) for n in self.shards), default=-1)
        target = self.root / SHARD_DIR / f"{number:05d}.safetensors"
        tmp = target.with_name(f".{target.name}.{os.getpid()}.tmp")
        metadata = {"keys": json.dumps([row.key for row in rows]), "files": json.dumps([row.stamp for row in rows])}
        save_file(tensors, str(tmp), metadata=metadata)
        os.chmod(tmp, 0o666 & ~_umask())  # readable by the team, like any other file written here
        os.replace(tmp, target)
        self.shards[target.name] = [row.key for row in rows]
        self.stamps.update((row.key, row.stamp) for row in rows)
        return target

    def mark_bad(self, key: str, reason: str) -> None:
        self.bad[key] = reason

    def finish(self, splits: Mapping[str, Iterable[str]]) -> dict[str, Any]:
        """Write the index and mark the cache complete; `splits` names each split's video keys."""
        have = self.done()
        counts = {}
        for split, keys in splits.items():
            keys = set(keys)
            missing = keys - have - set(self.bad)
            if missing:
                raise FeatureCacheError(f"{self.root}: {len(missing)} video(s) of split {split} were not encoded, "
                                        f"e.g. {sorted(missing)[:3]}")
            counts[split] = len(keys)
        self._drop_superseded()
        write_json(self.root / INDEX, {"shards": self.shards, "bad": self.bad, "files": self.stamps})
        self._write_manifest("complete", counts)
        return read_json(self.root / MANIFEST)

    def _drop_superseded(self) -> None:
        """Delete the shards none of whose rows is current (every video re-encoded into a later
        shard since its file changed): the index then lists only shards that serve."""
        newest: dict[str, str] = {}
        for name in sorted(self.shards, key=_shard_number):
            newest.update((key, name) for key in self.shards[name])
        for name in [n for n, keys in self.shards.items() if all(newest[key] != n for key in keys)]:
            (self.root / SHARD_DIR / name).unlink(missing_ok=True)
            del self.shards[name]


def decode_diff(cached: Any, params: DecodeParams) -> str:
    """`data.KEY: cache A, this run B` for each decode setting that differs."""
    now = _plain(asdict(params))
    cached = cached if isinstance(cached, dict) else {}
    keys = sorted(set(now) | set(cached), key=lambda k: (k not in now, k))
    return "; ".join(f"data.{k}: cache {cached.get(k)}, this run {now.get(k)}" for k in keys if cached.get(k) != now.get(k))


class FeatureStore:
    """Reads a finished cache: one video's row by key (memory-mapped safetensors, row slices only).

    Args:
        root: the cache folder.
        model_cfg: this run's model config; its `encoder_signature` must equal the cache's (None
            skips the check: tools that only read).
        params: this run's decode parameters (frame and segment counts); None skips the check.
    """

    def __init__(
        self, root: str | Path, model_cfg: Mapping[str, Any] | None = None, params: DecodeParams | None = None
    ) -> None:
        self.root = Path(root)
        self.manifest = read_manifest(self.root / MANIFEST, FORMAT, "data.features",
                                      f"damo-cache data=... model=... out={self.root}")  # fmt: skip
        if self.manifest.get("status") != "complete":
            raise FeatureCacheError(
                f"data.features={self.root}: the cache is incomplete (interrupted?); rerun the same damo-cache "
                "command to finish it (finished shards are kept)"
            )
        made = self.manifest.get("signature", {})
        if model_cfg is not None:
            signature = encoder_signature(model_cfg, pooled=made.get("pooled_local") is not None)
            problems = signature_diff(config_signature(made), _plain(signature))
            if problems:
                raise FeatureCacheError(
                    f"data.features={self.root} was made by another model config: {'; '.join(problems)}. "
                    "Rebuild it with this model config (damo-cache model=... out=NEW_DIR) or use the config it "
                    "was made with"
                )
        if params is not None and self.manifest.get("decode") != _plain(asdict(params)):
            raise FeatureCacheError(
                f"data.features={self.root} was decoded with other settings: {decode_diff(self.manifest.get('decode'), params)}; "
                "rebuild it with this run's (damo-cache with the same data keys, out=NEW_DIR) or use its settings"
            )
        index = read_json(self.root / INDEX)
        missing = sorted(shard for shard in index["shards"] if not (self.root / SHARD_DIR / shard).is_file())
        if missing:
            raise FeatureCacheError(
                f"data.features={self.root}: {len(missing)} shard file(s) its {INDEX} lists are gone (first: "
                f"{missing[0]}); rerun the damo-cache command that made it, which writes them again"
            )
        self.bad: dict[str, str] = dict(index.get("bad", {}))
        # key -> file stamp; None for a cache written before stamps were (its videos go unchecked)
        self.stamps: dict[str, dict[str, Any] | None] | None = index.get("files")
        self.rows: dict[str, tuple[str, int]] = {}
        for shard in sorted(index["shards"], key=_shard_number):  # a video re-encoded later: its newest row
            for row, key in enumerate(index["shards"][shard]):
                self.rows[key] = (shard, row)
        self._handles: dict[str, Any] = {}
        self._warned_unstamped = False
        self._unchanged: set[tuple[str, str]] = set()  # (path, key) found unchanged: each file checked once

    def __getstate__(self) -> dict[str, Any]:  # DataLoader workers open their own handles
        state = dict(self.__dict__)
        state["_handles"] = {}
        return state

    def __len__(self) -> int:
        return len(self.rows)

    def stamp(self, key: str) -> dict[str, Any] | None:
        """The file stamp recorded with video `key`'s row (None when the cache has none)."""
        return (self.stamps or {}).get(key)

    def files_digest(self) -> str | None:
        """A SHA-256 of every row's video content (size and digest, not the time a copy moves):
        what changes when a video is re-encoded into the cache (its manifest does not). None for a
        cache written before stamps were."""
        if self.stamps is None:
            return None
        contents = {key: [s.get("size"), s.get("sha256")] if s else None for key, s in self.stamps.items()}
        return hashlib.sha256(json.dumps(contents, sort_keys=True).encode()).hexdigest()

    def check_unchanged(self, files: Mapping[str, str]) -> None:
        """Refuse rows encoded from other files than `files` (video path -> key) are now: another
        set with the same file names, or regenerated videos. A cache written before stamps were
        is read unchecked, with one warning."""
        if self.stamps is None:
            if not self._warned_unstamped:
                self._warned_unstamped = True
                warnings.warn(f"data.features={self.root} was made before damo-cache recorded each video's size, "
                              "time and digest, so a video changed since goes unnoticed; rerun the damo-cache command "
                              "that made it to record them (it encodes every video once more)", UserWarning,
                              stacklevel=3)  # fmt: skip
            return
        changed = self.changed(files)
        if changed:
            path, key = sorted(changed)[0]
            raise FeatureCacheError(
                f"data.features={self.root}: {len(changed)} video file(s) changed since the cache was written (e.g. "
                f"{path}, cached as {key}), so its rows are of other videos; rerun damo-cache with this data config "
                f"and out={self.root} (it re-encodes only those), or use a cache made from these videos"
            )

    def changed(self, files: Mapping[str, str]) -> list[tuple[str, str]]:
        """(video path, key) of each of `files` (video path -> key) whose file is there and differs
        from the one its row was encoded from."""
        out = []
        for path, key in files.items():
            stamp = self.stamp(key)
            if stamp is None or (path, key) in self._unchanged:
                continue
            if file_changed(stamp, path):
                out.append((path, key))
            else:
                self._unchanged.add((path, key))
        return out

    def __contains__(self, key: str) -> bool:
        return key in self.rows

    def _handle(self, shard: str) -> Any:
        from safetensors import safe_open

        if shard not in self._handles:
            self._handles[shard] = safe_open(str(self.root / SHARD_DIR / shard), framework="pt")
        return self._handles[shard]

    def load(self, key: str) -> CachedFeatures:
        """The row of video `key`; KeyError names the cache when it has no such video."""
        if key not in self.rows:
            raise KeyError(f"video {key!r} is not in the feature cache {self.root}")
        shard, row = self.rows[key]
        handle = self._handle(shard)
        names = set(handle.keys())
        get = {name: handle.get_slice(name)[row] for name in names}
        return CachedFeatures(
            vision_global=get["vision_global"],
            vision_local=get["vision_local"],
            audio_global=get.get("audio_global"),
            audio_local=get.get("audio_local"),
            frame_times=get["frame_times"],
            frame_mask=get["frame_mask"],
            audio_times=get["audio_times"],
            audio_mask=get["audio_mask"],
            has_audio=bool(get["has_audio"]),
            duration=float(get["duration"]),
        )


class FeatureLoader:
    """The datamodule's loader when data.features is set: video path -> cached row.

    Called like `dataset.VideoLoader` (by path), so the record dataset and the collate serve both.
    Made once per split: the videos' files are checked against the cache's stamps here.
    """

    def __init__(self, store: FeatureStore, keys: Mapping[str, str]) -> None:
        self.store = store
        self.keys = dict(keys)  # absolute video path -> cache key
        store.check_unchanged(self.keys)

    def __call__(self, path: str) -> CachedFeatures:
        return self.store.load(self.keys[path])


def row_tensors(arrays: Mapping[str, Any]) -> dict[str, torch.Tensor]:
    """One video's non-feature row entries (times, masks, has_audio, duration) as tensors."""
    return {
        "frame_times": torch.as_tensor(np.asarray(arrays["frame_times"], dtype=np.float32)),
        "frame_mask": torch.as_tensor(np.asarray(arrays["frame_mask"], dtype=bool)),
        "audio_times": torch.as_tensor(np.asarray(arrays["audio_times"], dtype=np.float32)),
        "audio_mask": torch.as_tensor(np.asarray(arrays["audio_mask"], dtype=bool)),
        "has_audio": torch.tensor(bool(arrays["has_audio"])),
        "duration": torch.tensor(float(arrays["duration"]), dtype=torch.float64),
    }


class VideoFiles(torch.utils.data.Dataset):
    """(key, decoded video or None, reason) per video: what damo-cache decodes, through the decoded
    cache when the data config has one. A failure is returned (and recorded bad), never raised."""

    def __init__(self, items: Sequence[tuple[str, str]], params: DecodeParams, cache_dir: str | None) -> None:
        self.items = list(items)
        self.params = params
        self.cache_dir = cache_dir

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, index: int) -> tuple[str, Any, str]:
        from damo_lit.data.cache import DecodedCache
        from damo_lit.data.decode import DecodeError

        key, path = self.items[index]
        try:
            return key, DecodedCache(self.cache_dir, self.params).load(path), ""
        except DecodeError as err:
            return key, None, err.reason


class StampedVideoFiles(VideoFiles):
    """VideoFiles whose items also carry the file's stamp, taken before it is decoded (None when
    it cannot be read): what damo-cache records beside each row."""

    def __getitem__(self, index: int) -> tuple[str, Any, str, dict[str, Any] | None]:  # type: ignore[override]
        try:
            stamp: dict[str, Any] | None = file_stamp(self.items[index][1])
        except OSError:
            stamp = None
        return (*super().__getitem__(index), stamp)


def keep_list(items: list[Any]) -> list[Any]:
    """A DataLoader collate that keeps the samples as they are (the caller stacks what decoded)."""
    return items
