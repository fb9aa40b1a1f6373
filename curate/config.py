"""Typed configuration schemas: a pure schema, which looks at nothing but the values it holds.

Hydra composes a recipe from `pipelines/` over these dataclasses, so a misspelt key or a value of the wrong
type is refused by OmegaConf before any work starts. What types cannot express (ranges, choices, combinations)
each group states in its `problems()`, and `CurateConfig` refuses them all at once when it is built
(`OmegaConf.to_object` builds it, so a loaded config is always checked). Whether the files, environment variables
and models a config names are there is `curate.preflight`'s question; loading a config is `curate.configload`'s.
"""

from __future__ import annotations

import re
from dataclasses import asdict, dataclass, field, fields, replace
from enum import Enum
from typing import Any

from curate.licenses import KNOWN_CODES


class ConfigError(ValueError):
    """A configuration that cannot work; raised before any work starts."""


def refuse(problems: list[str]) -> None:
    """One ConfigError naming every problem (nothing: none); every message names the key to change."""
    if problems:
        raise ConfigError("invalid configuration:\n  - " + "\n  - ".join(problems))


def failed(*checks: tuple[bool, str]) -> list[str]:
    """The messages of the checks that do not hold."""
    return [message for ok, message in checks if not ok]


# The environment variables holding the Flickr API's credentials (ingest.source=flickr).
FLICKR_KEY_ENV = "FLICKR_API_KEY"
FLICKR_SECRET_ENV = "FLICKR_API_SECRET"

# The decide.* thresholds and review bands, each a score or probability within 0..1.
# The decision presets in curate/presets/ (tests/test_decide.py checks that the files agree).
SHIPPED_PRESETS = ("strict", "pass")
DECISION_KEYS = ("face", "person", "person_tiles", "hand", "clip", "face_review", "person_review",
                 "person_tiles_review", "hand_review", "clip_review")  # fmt: skip

# The detector families a config lists by registry name (detect.face, detect.person, detect.hand), in the order
# their columns stand in the manifest; a registry entry's `kind` is one of them (or clip).
DETECTOR_FAMILIES = ("face", "person", "hand")

# Marks a key that changes only speed or where the work runs, never what it produces: stages leave it out of their
# fingerprints (changing it redoes nothing) and the data card out of the settings it states.
RUNTIME: dict[str, Any] = {"runtime": True}


def runtime_keys(group: Any) -> frozenset[str]:
    """The keys of a config group (a dataclass or its instance) marked RUNTIME."""
    return frozenset(f.name for f in fields(group) if f.metadata.get("runtime"))


def output_settings(group: Any, skip: frozenset[str] = frozenset()) -> dict[str, Any]:
    """A config group's values that shape what it produces: its RUNTIME keys (and `skip`) left out. What a
    fingerprint holds and what the data card states."""
    return {k: v for k, v in asdict(group).items() if k not in runtime_keys(group) | skip}


class Stage(str, Enum):
    ingest = "ingest"
    license = "license"
    fetch = "fetch"
    detect = "detect"
    dedup = "dedup"
    review = "review"
    recheck = "recheck"
    release = "release"
    all = "all"
    # Not part of `all`: run by hand when wanted.
    audit = "audit"
    report = "report"


class Source(str, Enum):
    yfcc = "yfcc"
    flickr = "flickr"
    urls = "urls"
    folder = "folder"
    pass_release = "pass_release"


@dataclass
class RunConfig:
    # Where every stage reads and writes; relative paths are taken from the current directory.
    dir: str = "runs/sample"
    # Print the per-stage progress bars (turn off in batch logs).
    progress: bool = True
    # Warn loudly in the summary when a stage or source rejects or fails more than this fraction of its rows.
    alarm_fraction: float = 0.5
    # stage=all: a shard's license, fetch and detect run as a chain of tasks, detect of one shard while others
    # still download; false runs each stage over every shard before the next. Speed only: the outputs are the same.
    overlap: bool = field(default=True, metadata=RUNTIME)

    def problems(self) -> list[str]:
        return failed((0.0 <= self.alarm_fraction <= 1.0, "run.alarm_fraction must be within 0..1"))


@dataclass
class DaskConfig:
    # tcp://HOST:PORT of a running `dask scheduler`; empty means start a LocalCluster.
    address: str = ""
    # LocalCluster size; 0 means one worker process per core. With dask.gpus: the CPU workers beside the GPU ones
    # (every stage but detect, above all the downloads); 0 means one per core left over, at least one.
    n_workers: int = 0
    # False runs the LocalCluster's workers as threads of this process (quick for small runs and tests).
    processes: bool = True
    # Start one worker per GPU, each pinned with CUDA_VISIBLE_DEVICES and a GPU=1 resource, for detect alone, and
    # CPU workers beside them (dask.n_workers) for the other stages (0 = no GPU workers).
    gpus: int = 0
    # How many times Dask re-runs a shard task that raised (or whose worker died) before the shard counts as failed.
    retries: int = 2

    def problems(self) -> list[str]:
        return failed(
            (self.gpus >= 0, "dask.gpus must be >= 0"),
            (self.retries >= 0, "dask.retries must be >= 0"),
            (self.n_workers >= 0, "dask.n_workers must be >= 0 (0 = one per core)"),
            (
                not self.address or self.address.startswith(("tcp://", "tls://", "inproc://", "ucx://")),
                f"dask.address={self.address!r} must look like tcp://HOST:PORT",
            ),
        )


@dataclass
class FlickrQuery:
    # Free-text search (flickr.photos.search `text`).
    text: str = ""
    # Comma-separated tags to search for.
    tags: str = ""
    # Flickr licence ids to ask the API for (4 = CC BY 2.0, 11 = CC BY 4.0).
    license_ids: list[int] = field(default_factory=lambda: [4, 11])
    # Only photos uploaded on or after this date (YYYY-MM-DD); split large queries by date.
    min_upload_date: str = ""
    # Only photos uploaded before this date (YYYY-MM-DD).
    max_upload_date: str = ""
    # Results per API page (1..500).
    per_page: int = 500
    # Pages to read per query (Flickr returns about 4,000 results at most).
    max_pages: int = 1
    # Only for tests and proxies: the REST endpoint the flickrapi client talks to.
    endpoint: str = ""
    # Timeout of one API call, in seconds.
    timeout_s: float = 30.0

    def problems(self) -> list[str]:
        return failed(
            (1 <= self.per_page <= 500, "ingest.flickr.per_page must be 1..500"),
            (self.max_pages >= 1, "ingest.flickr.max_pages must be >= 1"),
        )


@dataclass
class IngestConfig:
    # Where candidates come from: yfcc, flickr (API), urls (a list), folder, pass_release.
    source: Source = Source.yfcc
    # A file, a glob, or a folder (for source=folder); several YFCC files may be given as a glob.
    path: str = ""
    # Fixed here for the whole run: every later stage keeps shard N as part N.
    num_shards: int = 4
    # Read at most this many candidates per input file (0 = all); handy for trial runs.
    limit: int = 0
    # For URL lists: which column holds the URL and, optionally, a stable id.
    url_column: str = "url"
    # The column holding a stable id (empty = the URL is the id).
    id_column: str = ""
    # Licence code applied to candidates that carry none (url lists, folders); empty = unknown.
    assume_license: str = ""
    flickr: FlickrQuery = field(default_factory=FlickrQuery)

    def problems(self) -> list[str]:
        # Whether ingest.path is given and names existing inputs depends on the stage and the disk: preflight.
        return [
            *failed(
                (self.num_shards >= 1, "ingest.num_shards must be >= 1"),
                (self.limit >= 0, "ingest.limit must be >= 0 (0 = no limit)"),
                (
                    not self.assume_license or self.assume_license in KNOWN_CODES,
                    f"ingest.assume_license={self.assume_license!r} is not a known code; known: {sorted(KNOWN_CODES)}",
                ),
            ),
            *self.flickr.problems(),
        ]


@dataclass
class LicenseConfig:
    # Canonical licence codes to keep (see curate/licenses.py); PASS kept CC BY only.
    allow: list[str] = field(default_factory=lambda: ["cc-by"])
    # Keep candidates whose licence is unknown (only sensible for your own folders).
    keep_unknown: bool = False

    def problems(self) -> list[str]:
        unknown = [code for code in self.allow if code not in KNOWN_CODES]
        return failed((not unknown, f"license.allow has unknown codes {unknown}; known: {sorted(KNOWN_CODES)}"))


@dataclass
class FetchConfig:
    # Downloads in flight per shard task.
    concurrency: int = field(default=64, metadata=RUNTIME)
    # Downloads in flight per host and worker process (be polite to one server).
    per_host_concurrency: int = field(default=16, metadata=RUNTIME)
    # Seconds to wait for a connection.
    connect_timeout_s: float = field(default=5.0, metadata=RUNTIME)
    # Seconds to wait between two reads of the response.
    read_timeout_s: float = 10.0
    # Wall-clock cap for one download, body included (defeats slow-drip servers).
    total_timeout_s: float = 30.0
    # Attempts after the first for a transient failure (timeouts, 5xx, 429, dropped connections).
    retries: int = 3
    # Exponential back-off base between attempts, with full jitter (uniform 0..base*2^n).
    backoff_s: float = field(default=0.5, metadata=RUNTIME)
    # A server's Retry-After (429/503) is honoured up to this many seconds; longer waits fail the attempt now.
    max_retry_after_s: float = 30.0
    # Redirects followed before the download fails as redirect_loop.
    max_redirects: int = 5
    # Larger downloads stop and fail as too_large.
    max_bytes: int = 20_000_000
    # Images whose short side is below this many pixels are rejected as too_small.
    min_side: int = 64
    # Images longer than this ratio of their sides are rejected as extreme_aspect.
    max_aspect_ratio: float = 5.0
    # Images with more pixels are rejected as decompression_bomb, before decoding them.
    max_pixels: int = 50_000_000
    # Image formats kept (jpeg, png, webp); others are unsupported_format.
    allowed_formats: list[str] = field(default_factory=lambda: ["jpeg", "png", "webp"])
    # JPEGs are always entropy-decoded in full (truncation and damaged data are caught either way); false
    # reconstructs their pixels at 1/8 scale for the checks, which halves fetch's CPU per image.
    full_decode: bool = False
    # Remove EXIF/XMP/IPTC (GPS positions are personal data) without touching the pixel data.
    strip_metadata: bool = True
    # Root under which file: URLs may be read (and against which relative file: URLs resolve).
    file_root: str = ""
    # The User-Agent header of every download.
    user_agent: str = field(default="curate/0.1 (dataset research; +https://github.com/curate)", metadata=RUNTIME)
    # Re-try only the rows of finished shards that failed for a transient reason.
    retry_failed: bool = field(default=False, metadata=RUNTIME)
    # Honour a site's opt-out from AI training: a 2xx response whose X-Robots-Tag holds one of
    # fetch.opt_out_directives (unprefixed, or for `*` or fetch.user_agent's product token) is rejected as opt_out,
    # its body unread.
    honour_opt_out: bool = True
    # The X-Robots-Tag directives that opt an image out (lower-case). img2dataset also honours none, noindex
    # and noimageindex: add them here to do the same (none counts as noindex and nofollow).
    opt_out_directives: list[str] = field(default_factory=lambda: ["noai", "noimageai"])

    # The X-Robots-Tag directives fetch.opt_out_directives may name (those without a value).
    X_ROBOTS_DIRECTIVES = ("noai", "noimageai", "none", "noindex", "noimageindex", "nofollow", "noarchive",
                           "nosnippet", "notranslate", "nocache")  # fmt: skip

    def problems(self) -> list[str]:
        bad_formats = [x for x in self.allowed_formats if x not in ("jpeg", "png", "webp")]
        bad_directives = [x for x in self.opt_out_directives if x not in self.X_ROBOTS_DIRECTIVES]
        timeouts = (self.connect_timeout_s, self.read_timeout_s, self.total_timeout_s)
        return failed(
            (self.concurrency >= 1, "fetch.concurrency must be >= 1"),
            (self.per_host_concurrency >= 1, "fetch.per_host_concurrency must be >= 1"),
            (self.retries >= 0, "fetch.retries must be >= 0"),
            (self.max_bytes > 0, "fetch.max_bytes must be > 0"),
            (self.max_aspect_ratio >= 1.0, "fetch.max_aspect_ratio must be >= 1"),
            (all(t > 0 for t in timeouts), "fetch.*_timeout_s must be > 0"),
            (not bad_formats, f"fetch.allowed_formats has {bad_formats}; choose from jpeg, png, webp"),
            (self.max_retry_after_s >= 0, "fetch.max_retry_after_s must be >= 0"),
            (
                not bad_directives,
                f"fetch.opt_out_directives has {bad_directives}; choose from {', '.join(self.X_ROBOTS_DIRECTIVES)}",
            ),
        )


@dataclass
class ModelsConfig:
    # A folder holding the weight files (air-gapped clusters); empty = the download cache below.
    dir: str = ""
    # Where downloaded weights are kept (used when models.dir is empty).
    cache: str = "~/.cache/curate/models"
    # Download missing weights (sha256-checked) on first use; false fails before any work instead.
    download: bool = True

    def problems(self) -> list[str]:
        # Whether the weights are there (or may be fetched) is the registry's to say, before detect's work.
        return []


TILE_POLICIES = ("always", "auto", "off")


@dataclass
class DetectConfig:
    # Registry names (curate/models/registry.py); an empty list switches that family off. The defaults are the
    # offline stack the strict preset was calibrated for: PASS's RetinaFace MobileNet-0.25 and BlazeFace full
    # range (painted and drawn faces RetinaFace misses), YOLOX-Nano with tiles, MediaPipe hands.
    face: list[str] = field(default_factory=lambda: ["retinaface_mnet025", "blazeface_full"])
    # Person detectors (registry names, e.g. yolox_nano, yolox_l, fasterrcnn_resnet50_fpn_v2); an empty list
    # switches persons off.
    person: list[str] = field(default_factory=lambda: ["yolox_nano"])
    # Hand detectors (registry names, e.g. mediapipe_hands: palms, then hand presence on each palm's crop), for
    # the lone hands and body parts that face and person detectors miss; hand_<name>_* columns, decided by
    # decide.hand. They never take tiles. Empty switches hands off.
    hand: list[str] = field(default_factory=lambda: ["mediapipe_hands"])
    # open_clip model and pretrained tag, e.g. ViT-B-32 + openai; empty model = no CLIP filter.
    clip_model: str = ""
    # The open_clip pretrained tag of detect.clip_model.
    clip_pretrained: str = "openai"
    # auto = CUDA when torch sees a GPU, else CPU.
    device: str = field(default="auto", metadata=RUNTIME)
    # Images per batch (16 suits CPUs; use 128 on a GPU). Speed only.
    batch_size: int = field(default=16, metadata=RUNTIME)
    # A batch also stops before this many decoded pixels; 0 = batch_size x 1024 x 768 (12.6 MP at batch_size 16,
    # so the GPU advice batch_size=128 scales with it). A shard of 48 MP photos is then scored one photo at a
    # time, not 16 (about 40 GB of activations at their native size); an image over the budget is a batch by
    # itself. Speed and memory only: the results are those of one image at a time.
    batch_pixels: int = field(default=0, metadata=RUNTIME)
    # Faces: images whose long side exceeds this are shrunk for the face detectors (0 = original size, as PASS
    # ran). No dev-set image exceeds 1024 px, so no cap >= 1024 changes the dev figures. Measured with the earlier
    # stack (RetinaFace MobileNet-0.25 + YOLOX-Nano, its hand-tuned bars; recall 0.956 and false removals 0.143 on
    # dev): with the dev set upscaled 4x (long sides ~4096, standing in for 12-16 MP originals), it removed
    # 108 of 114 human images at the original size and at caps 3000, 2048 and 1600,
    # 109 at 1024; false removals 24, 23, 19, 18, 18 of 105 (RetinaFace fires on animal faces at large sizes).
    # 2048 rather than 1024: upscaled images hold no detail finer than their source, so the test cannot show
    # what a smaller cap loses on a real 48 MP photo (faces under 16 px x side / cap, 62 px at 8000 / 2048).
    # It bounds the detector's input to 4 MP: on 2 CPU cores RetinaFace took 0.9 s on a 48 MP photo (5.7 s at its
    # original size) and peaked 1.9 GB lower (bench/README.md, "Memory").
    face_max_side: int = 2048
    # Persons: extra passes on an N x N grid of overlapping crops, for small distant people (1 = off). Their best
    # score is stored apart (person_<name>_tiles_max), with a bar of its own. strict was calibrated with 3 (and
    # face_max_side 2048, tile_min_side 0): other values need a preset calibrated for them, or decide.preset=custom.
    person_tiles: int = 3
    # Only images whose long side exceeds this get tiles (0 = all; the strict preset was calibrated with 0).
    person_tile_min_side: int = 0
    # Person detectors (of detect.person) that score the full view only, whatever detect.person_tiles says: a
    # large model whose own input already resolves small people (pipeline=pass: YOLOX-L beside YOLOX-Nano's
    # tiles), or one that cannot tile (Faster R-CNN). Their columns have no _tiles_max.
    person_tiles_skip: list[str] = field(default_factory=list)
    # When the tiles are looked at. always: every tile of every image. off: never (as person_tiles=1; strict,
    # calibrated with tiles, then refuses). auto: only where they can change the decision. An image whose full
    # view some face, person or hand score already puts at or above detect.tile_decisive gets no tiles (stored:
    # person_<name>_tiles_decided_by names that column; under a preset that acts on tiles and rejects it on no
    # column, the image goes to review, `tiles_skipped`); and of the others' tiles, only those where the full
    # view's person score reaches detect.tile_gate somewhere inside the tile. On the dev set at the strict preset
    # (curate.evaluate) auto matched always within one image (recall and false removals) with 1.95 tiles per
    # image instead of 9 (README).
    tile_policy: str = "auto"
    # auto: a face, person (full view) or hand score at or above this decides the image without its tiles. Where
    # the preset's reject bar on that column is higher (strict: the hands' 0.859, RetinaFace MobileNet-0.25's 1.0),
    # the image is sent to review (tiles_skipped) unless another column rejects it.
    tile_decisive: float = 0.7
    # auto: a tile is looked at when the full view's raw person score (objectness x class, no floor) reaches this
    # for some anchor whose box centre lies in the tile. Tuned on the dev set (optimistic elsewhere).
    tile_gate: float = 0.001
    # Boxes at or above this score are kept in the manifest (scores below it only count in *_max).
    box_floor: float = 0.1
    # fp16 on CUDA for the person detectors and CLIP (RetinaFace MobileNet-0.25 always runs in float32).
    half: bool = True
    # On CUDA, decode JPEGs with nvJPEG on the GPU (batched); false = PIL in a CPU thread.
    gpu_decode: bool = field(default=True, metadata=RUNTIME)
    # Torch CPU threads per worker (0 = torch's default).
    torch_threads: int = field(default=0, metadata=RUNTIME)

    def problems(self) -> list[str]:
        # Which models the lists may name is the registry's to say (preflight asks it).
        return failed(
            (
                self.device in ("auto", "cpu", "cuda") or self.device.startswith("cuda:"),
                f"detect.device={self.device!r}: use auto, cpu, cuda or cuda:N",
            ),
            (self.batch_size >= 1, "detect.batch_size must be >= 1"),
            (self.batch_pixels >= 0, "detect.batch_pixels must be >= 0 (0 = batch_size x 1024 x 768)"),
            (self.face_max_side >= 0, "detect.face_max_side must be >= 0 (0 = native size)"),
            (self.person_tiles >= 1, "detect.person_tiles must be >= 1 (1 = no tiles)"),
            (self.person_tile_min_side >= 0, "detect.person_tile_min_side must be >= 0 (0 = tile every image)"),
            (
                self.tile_policy in TILE_POLICIES,
                f"detect.tile_policy={self.tile_policy!r}: use {', '.join(TILE_POLICIES)}",
            ),
            (0.0 < self.tile_decisive <= 1.0, "detect.tile_decisive must be in (0, 1] (1 = only a certain score)"),
            (0.0 <= self.tile_gate < 1.0, "detect.tile_gate must be in [0, 1) (0 = every tile of an undecided image)"),
            *(
                (name in self.person, f"detect.person_tiles_skip names {name}, which detect.person does not list")
                for name in self.person_tiles_skip
            ),
        )

    def seen_by(self, name: str) -> DetectConfig:
        """The settings as detector `name` sees them: without tiles when detect.person_tiles_skip lists it."""
        untiled = name in self.person_tiles_skip or self.tile_policy == "off"
        return replace(self, person_tiles=1) if untiled else self


@dataclass
class DecideConfig:
    """Thresholds turning stored scores into keep / reject / review; changing them never re-runs a model."""

    # strict = one bar per score column of the offline stack (curate/presets/strict.yaml); pass = the same for
    # pipeline=pass's models; a path = a preset file of your own (curate calibrate writes them); pass_v1 = PASS's
    # exact rule (RetinaFace MobileNet-0.25 or a full-image person > 0.5, nothing else); custom = the family
    # thresholds below.
    preset: str = "strict"
    # Face score above which an image is rejected (decide.preset=custom).
    face: float = 0.5
    # Person score (full image) above which an image is rejected.
    person: float = 0.5
    # the person detectors' scores on tiles (detect.person_tiles > 1): upscaled crops fire more easily
    person_tiles: float = 0.5
    # Hand score (hand_<name>_max) above which an image is rejected (decide.preset=custom).
    hand: float = 0.5
    # CLIP human probability above which an image is rejected.
    clip: float = 0.5
    # Scores between these and the thresholds above go to human review ("uncertain"); 1.0 = no band.
    face_review: float = 1.0
    # Person scores between this and decide.person go to review (1.0 = no band).
    person_review: float = 1.0
    # Tile scores between this and decide.person_tiles go to review (1.0 = no band).
    person_tiles_review: float = 1.0
    # Hand scores between this and decide.hand go to review (1.0 = no band).
    hand_review: float = 1.0
    # CLIP probabilities between this and decide.clip go to review (1.0 = no band).
    clip_review: float = 1.0

    def problems(self) -> list[str]:
        return failed(
            (
                self.preset in ("pass_v1", "custom", *SHIPPED_PRESETS) or self.preset.endswith((".yaml", ".yml")),
                "decide.preset must be strict, pass, pass_v1, custom or the path of a preset file (.yaml)",
            ),
            *((0.0 <= getattr(self, key) <= 1.0, f"decide.{key} must be within 0..1") for key in DECISION_KEYS),
        )


@dataclass
class ReferenceSet:
    """An evaluation set no training image may duplicate (ImageNet val, Places205 val, ...)."""

    # The set's name, as the data card and dedup_of show it.
    name: str = ""
    # Exactly one of: a folder of images; a file of hashes (CSV/Parquet with a sha256 and/or a phash column,
    # phash as 16 hex digits); a .npy (N, D) of L2-normalised CLIP embeddings of the same model as detect's.
    folder: str = ""
    # A CSV/Parquet file with a sha256 and/or a phash column (16 hex digits).
    hashes: str = ""
    # A .npy (N, D) of L2-normalised CLIP embeddings of detect's CLIP model.
    embeddings: str = ""

    def problems(self) -> list[str]:
        # Whether the file or folder exists is checked by preflight, and only for the stage that reads it.
        given = [k for k in ("folder", "hashes", "embeddings") if getattr(self, k)]
        return failed(
            (bool(self.name), "each dedup.references entry needs a name"),
            (len(given) == 1, f"dedup.references {self.name!r}: give exactly one of folder, hashes, embeddings"),
        )


@dataclass
class DedupConfig:
    # Exact duplicates: same sha256 of the bytes.
    exact: bool = True
    # Near duplicates: 64-bit DCT pHash within this Hamming distance (-1 = off). Re-encoding and halving the
    # size move it by 0-4; crops of a few percent and borders by 2-32 (dedup.crop_distance catches those).
    phash_distance: int = 5
    # Cropped and bordered copies: each image is also hashed on ten crop views of itself (curate.dedup.phash.VIEWS)
    # and, where it has uniform borders, on its views without them; a full view within this distance of another
    # image's view makes it a near duplicate (-1 = off; phash_distance=-1 turns it off too). 4, from bench/neardup.py
    # on the 219 dev photos (bench/README.md; tuned on them, so optimistic): crops of 2-5 % per side caught 1.000, of
    # 5-10 % 0.963, bordered copies 1.000, no distinct photos merged; 6 caught all the 5-10 % crops but has 120x the
    # random neighbours.
    crop_distance: int = 4
    # Also match left-right mirror images.
    flip: bool = False
    # Semantic duplicates: cosine of detect's CLIP embeddings at or above this (0 = off; needs detect.clip_model).
    embedding_cosine: float = 0.95
    # Exact search (one task, faiss flat) up to this many embedded images (quadratic: bench/dedup.py took 1.65 s for
    # 20k 64-d ones on 2 cores); beyond, the clustered search of curate.dedup.semantic (bench/README.md).
    flat_max: int = 20_000
    # Retired: the search beyond dedup.flat_max is no longer faiss IVF, and this is not read. Kept so that run
    # directories that recorded it still load.
    ivf_nprobe: int = 16
    # Evaluation sets no released image may duplicate: [{name: ..., folder|hashes|embeddings: ...}].
    references: list[ReferenceSet] = field(default_factory=list)

    def problems(self) -> list[str]:
        return [
            *failed(
                (-1 <= self.phash_distance <= 16, "dedup.phash_distance must be within -1..16 (-1 = off)"),
                (-1 <= self.crop_distance <= 16, "dedup.crop_distance must be within -1..16 (-1 = off)"),
                (0.0 <= self.embedding_cosine <= 1.0, "dedup.embedding_cosine must be within 0..1 (0 = off)"),
            ),
            *(problem for ref in self.references for problem in ref.problems()),
        ]


@dataclass
class ReviewConfig:
    # Kept images whose best score is within this fraction of its threshold are shown as borderline.
    borderline_margin: float = field(default=0.5, metadata=RUNTIME)

    def problems(self) -> list[str]:
        return failed((0.0 <= self.borderline_margin <= 1.0, "review.borderline_margin must be within 0..1"))


@dataclass
class AuditConfig:
    # stage=audit draws this many released images at random (seeded) for people to check.
    size: int = 100
    # Seed of the audit draw (the same seed and release give the same sample).
    seed: int = 0
    # The release to audit; empty = release.version.
    version: str = ""

    def problems(self) -> list[str]:
        return failed((self.size >= 1, "audit.size must be >= 1"))


@dataclass
class RecheckConfig:
    # With release.previous set, ask the sources again about every image that version released: still there,
    # same licence, not opted out? false releases without asking (the data card then says they were not asked).
    enabled: bool = True
    # Flickr API calls per hour for Flickr and YFCC images, asked per owner (people.getPublicPhotos, 500 a page);
    # a Flickr key allows about 3,600. The key comes from the environment, as for ingest.source=flickr.
    flickr_calls_per_hour: float = field(default=3600.0, metadata=RUNTIME)
    # Owners asked per cached step: a killed recheck resumes after the last finished batch.
    owners_per_batch: int = field(default=100, metadata=RUNTIME)
    # Tries of one Flickr page before the owner's images are left unreachable (asked again next time).
    attempts: int = 3
    # Back-off base in seconds between two tries of a Flickr page (doubles each try).
    backoff_s: float = field(default=5.0, metadata=RUNTIME)
    # A URL whose final file name (after redirects) starts with one of these is a placeholder: gone_at_source
    # (Flickr redirects a deleted photo to s.yimg.com/.../photo_unavailable*.png).
    placeholder_names: list[str] = field(default_factory=lambda: ["photo_unavailable"])
    # SHA-256 of placeholder images served under the image's own URL (lower-case hex): gone_at_source.
    placeholder_sha256: list[str] = field(default_factory=list)
    # Reuse the previous release's "ok" answers younger than this many days instead of asking again (0 = ask
    # every image again).
    max_age_days: float = 0.0

    def problems(self) -> list[str]:
        bad_hashes = [h for h in self.placeholder_sha256 if not re.fullmatch(r"[0-9a-f]{64}", h)]
        return failed(
            (self.flickr_calls_per_hour > 0, "recheck.flickr_calls_per_hour must be > 0"),
            (self.owners_per_batch >= 1, "recheck.owners_per_batch must be >= 1"),
            (self.attempts >= 1, "recheck.attempts must be >= 1"),
            (self.max_age_days >= 0, "recheck.max_age_days must be >= 0"),
            (not bad_hashes, f"recheck.placeholder_sha256 has {bad_hashes}: give 64 lower-case hex digits"),
        )


@dataclass
class ReleaseConfig:
    # The release's name under release/ (e.g. v1); a published version never changes, make the next one.
    version: str = "v1"
    # The dataset's name on the data card.
    name: str = "PASS-rebuild"
    # Where the generated data card is also written (besides the release folder); empty = run.dir/data_cards.
    data_card_dir: str = field(default="", metadata=RUNTIME)
    # At most this many released images per Flickr owner (PASS: 80; 0 = no cap).
    owner_cap: int = 0
    # Then a seeded sample down to this many released images (PASS: 1,280,000; 0 = keep all).
    target_size: int = 0
    # Seed of the sample down to release.target_size (and of the owner cap's order).
    seed: int = 0
    # A previous release folder (its manifest.parquet, or only pass_metadata.csv for a release made elsewhere):
    # diff.parquet lists what was added, removed and kept.
    previous: str = ""
    # CSV files of image_id,reason,date: those images are removed from this release and recorded. A previous
    # release's takedowns carry over.
    takedowns: list[str] = field(default_factory=list)
    # Release although some shard of an earlier stage failed: that shard's rows are written as failed with
    # reason shard_failed. False refuses to release while any shard is failed.
    allow_failed_shards: bool = field(default=False, metadata=RUNTIME)
    # An evaluation of the human filter (the JSON `curate evaluate ... out=FILE` writes), for the data card's
    # measured recall and false-removal rate; empty = the card says they were not measured.
    evaluation: str = ""

    def problems(self) -> list[str]:
        # release.previous, release.takedowns and release.evaluation name files: preflight checks they exist.
        return failed(
            (
                bool(self.version) and all(c.isalnum() or c in "-_" for c in self.version),
                f"release.version={self.version!r} must be non-empty letters, digits, '-' or '_' (e.g. v2)",
            ),
            (
                self.owner_cap >= 0 and self.target_size >= 0,
                "release.owner_cap and release.target_size must be >= 0",
            ),
        )


@dataclass
class CurateConfig:
    # Which stage to run: one of the pipeline's stages, all of them in order, or a tool (audit, report).
    stage: Stage = Stage.all
    # The recipe this run was made from (pipelines/NAME.yaml or a path); a run directory remembers it.
    pipeline: str = "sample"
    run: RunConfig = field(default_factory=RunConfig)
    dask: DaskConfig = field(default_factory=DaskConfig)
    ingest: IngestConfig = field(default_factory=IngestConfig)
    license: LicenseConfig = field(default_factory=LicenseConfig)
    fetch: FetchConfig = field(default_factory=FetchConfig)
    models: ModelsConfig = field(default_factory=ModelsConfig)
    detect: DetectConfig = field(default_factory=DetectConfig)
    decide: DecideConfig = field(default_factory=DecideConfig)
    dedup: DedupConfig = field(default_factory=DedupConfig)
    review: ReviewConfig = field(default_factory=ReviewConfig)
    audit: AuditConfig = field(default_factory=AuditConfig)
    recheck: RecheckConfig = field(default_factory=RecheckConfig)
    release: ReleaseConfig = field(default_factory=ReleaseConfig)

    def __post_init__(self) -> None:
        # OmegaConf.to_object builds the groups first and this last: every group's problems are refused at once.
        refuse(self.problems())

    def problems(self) -> list[str]:
        """What every group's values cannot be (no group is checked against another today)."""
        found: list[str] = []
        for spec in fields(self):
            check = getattr(getattr(self, spec.name), "problems", None)
            if check is not None:
                found += check()
        return found
