"""Reader for our processed clip shards (src/data/shards.rs; format in docs/DESIGN):

    DIR/manifest.json    {"format": "simclr-shards", "version": 1, "frames": T, "height": H,
                          "width": W, "channels": 3, "dtype": "u8", "clips": N,
                          "shards": [{"file": "shard-00000.bin", "clips": n, "bytes": b, "xxh3": "..."}],
                          "source": {...}, "labels": "labels.jsonl"}
    DIR/shard-00000.bin  n clips of T x H x W x 3 u8, back to back, no header

Like the Rust reader it refuses an unknown format or version and checks every shard's size
against the manifest before memory-mapping it; checksums are verified only on request (and
only where the `xxhash` module is installed).
"""
import json
import os

import numpy as np

FORMAT = "simclr-shards"
VERSION = 1
MANIFEST = "manifest.json"


class ShardError(Exception):
    """A dataset that cannot be read, with a message that says what to do."""


def _fail(path, msg):
    raise ShardError(f"{path}: {msg}")


def read_manifest(directory):
    path = os.path.join(directory, MANIFEST)
    if not os.path.isdir(directory):
        raise ShardError(
            f"{directory}: no such directory; make a dataset with "
            f"`simclr-data bouncing --out {directory}` (or `simclr-data clevrer ...`)"
        )
    if not os.path.exists(path):
        _fail(path, "missing: this is not a processed dataset, or its writer did not finish (rerun it: it resumes)")
    try:
        with open(path) as f:
            m = json.load(f)
    except (OSError, ValueError) as e:
        _fail(path, f"cannot read the manifest: {e}")
    if not isinstance(m, dict):
        _fail(path, "the manifest is not a JSON object")
    if m.get("format") != FORMAT:
        _fail(path, f"format is {m.get('format')!r}, expected {FORMAT!r}: not a simclr shard dataset")
    if m.get("version") != VERSION:
        _fail(
            path,
            f"version {m.get('version')!r} is not known to this reader (it reads version {VERSION}); "
            "regenerate the dataset or update tools/torch_reference/shards.py",
        )
    for key in ("frames", "height", "width", "channels", "clips"):
        v = m.get(key)
        if not isinstance(v, int) or isinstance(v, bool) or v < 1:
            _fail(path, f"`{key}` must be a positive integer, got {v!r}")
    if m["channels"] != 3 or m.get("dtype") != "u8":
        _fail(path, f"clips must be 3-channel u8, got {m['channels']} channels of {m.get('dtype')!r}")
    shards = m.get("shards")
    if not isinstance(shards, list) or not shards:
        _fail(path, "`shards` must be a non-empty list")
    return m


class ShardDataset:
    """Memory-mapped clips: `clips(indices)` gives u8 [len(indices), T, H, W, 3]."""

    def __init__(self, directory, verify_checksums=False):
        self.dir = directory
        m = read_manifest(directory)
        self.manifest = m
        self.frames, self.height, self.width = m["frames"], m["height"], m["width"]
        self.clip_bytes = self.frames * self.height * self.width * 3
        self.maps, self.starts = [], []
        total = 0
        for i, s in enumerate(m["shards"]):
            if not isinstance(s, dict) or not isinstance(s.get("file"), str) or not isinstance(s.get("clips"), int):
                _fail(os.path.join(directory, MANIFEST), f"shard entry {i} is malformed: {s!r}")
            f = os.path.join(directory, s["file"])
            if os.path.basename(s["file"]) != s["file"]:
                _fail(f, "shard file names must not contain directories")
            expected = s["clips"] * self.clip_bytes
            if s.get("bytes") != expected:
                _fail(f, f"the manifest says {s.get('bytes')} bytes but {s['clips']} clips need {expected}")
            try:
                size = os.path.getsize(f)
            except OSError:
                _fail(f, "missing: the dataset is incomplete; regenerate it (the writer resumes)")
            if size != expected:
                _fail(f, f"{size} bytes on disk, the manifest says {expected}: truncated or corrupt; regenerate it")
            if verify_checksums:
                self._verify(f, s.get("xxh3"))
            self.maps.append(
                np.memmap(f, dtype=np.uint8, mode="r", shape=(s["clips"], self.frames, self.height, self.width, 3))
            )
            self.starts.append(total)
            total += s["clips"]
        if total != m["clips"]:
            _fail(os.path.join(directory, MANIFEST), f"shards hold {total} clips but `clips` says {m['clips']}")
        self.num_clips = total
        self.starts = np.asarray(self.starts, dtype=np.int64)

    @staticmethod
    def _verify(path, want):
        try:
            import xxhash
        except ImportError:
            raise ShardError("checksum verification needs the `xxhash` module (pip install xxhash)") from None
        h = xxhash.xxh3_64()
        with open(path, "rb") as f:
            for chunk in iter(lambda: f.read(1 << 24), b""):
                h.update(chunk)
        if f"{h.intdigest():016x}" != want:
            _fail(path, f"xxh3 {h.intdigest():016x} does not match the manifest's {want}: corrupt; regenerate it")

    def __len__(self):
        return self.num_clips

    def clips(self, indices, frame_indices=None, out=None):
        """Gathers clips (and, if given, only `frame_indices` of each) into u8 [n, T', H, W, 3]."""
        indices = np.asarray(indices, dtype=np.int64)
        t = self.frames if frame_indices is None else len(frame_indices)
        if out is None:
            out = np.empty((len(indices), t, self.height, self.width, 3), dtype=np.uint8)
        shard = np.searchsorted(self.starts, indices, side="right") - 1
        for j, (s, i) in enumerate(zip(shard, indices)):
            clip = self.maps[s][i - self.starts[s]]
            out[j] = clip if frame_indices is None else clip[frame_indices]
        return out


def evenly_spaced_frames(total, n):
    """The loader's frame selection (src/data/loader.rs): frame k is floor(k * total / n)."""
    return [k * total // n for k in range(n)]


def write_random_dataset(directory, clips, frames, size, seed=0, clips_per_shard=3):
    """A small dataset of random clips in the same format (for --check without a shard directory)."""
    os.makedirs(directory, exist_ok=True)
    rng = np.random.default_rng(seed)
    shards, done, s = [], 0, 0
    while done < clips:
        n = min(clips_per_shard, clips - done)
        data = rng.integers(0, 256, size=(n, frames, size, size, 3), dtype=np.uint8)
        name = f"shard-{s:05d}.bin"
        data.tofile(os.path.join(directory, name))
        shards.append({"file": name, "clips": n, "bytes": data.nbytes, "xxh3": ""})
        done, s = done + n, s + 1
    manifest = {
        "format": FORMAT, "version": VERSION, "frames": frames, "height": size, "width": size, "channels": 3,
        "dtype": "u8", "clips": clips, "shards": shards, "source": {"generator": "torch_reference random"},
        "labels": "labels.jsonl",
    }
    with open(os.path.join(directory, MANIFEST), "w") as f:
        json.dump(manifest, f)
