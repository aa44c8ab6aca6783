"""The directory layout of a file store root: one sub-directory per block geometry.

::

    root/                               0700
      .dualpath-kv-ledger               0600  bytes stored under root + the lock (capacity.py)
      kv-L30-T64-B1536/                 0700  one per geometry (layers, tokens, bytes/token/layer)
        dualpath-kvstore.json           0600  format + geometry, written once
        00/ .. ff/                      0700  fan-out by the hash's first two hex chars
          <hash>.kvb                    0600  one Full Block (format in `block_file`)
        .quarantine/                    0700  corrupt blocks moved aside

Block names carry the model identity and the block size, so models that share a geometry can
share its directory without ever sharing a block; models (or block sizes) with different
geometries get their own directory, created on first use. So one root serves any number of
models side by side with no configuration.

An old-layout root (format v1 before geometry directories: `root/dualpath-kvstore.json` and
`root/00..ff`) is migrated in place on open, under the root lock: its fan-out directories and
quarantine move into the directory of the geometry its metadata names (renames only, no block
is copied) and the metadata file moves last, which marks the migration done. Its blocks stay
valid (version 1 files are read as before).

Files and directories are created owner-only (prompt KV is user data); an existing root that
we own and that others could read is tightened to 0700 on open (logged).
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import re
import secrets
import stat
import time
from dataclasses import asdict
from pathlib import Path

from dualpath.core.errors import StoreError
from dualpath.kv import block_io
from dualpath.kv.block_file import FORMAT_VERSION, MAX_KEY_CHARS, READABLE_VERSIONS, payload_offset
from dualpath.kv.layout import BlockGeometry

logger = logging.getLogger(__name__)

META_NAME = "dualpath-kvstore.json"
QUARANTINE_DIR = ".quarantine"
GEOMETRY_PREFIX = "kv-"
FORMAT_NAME = "dualpath-kv-file-store"
DIR_MODE = 0o700
FILE_MODE = 0o600
FAN_OUT = tuple(f"{i:02x}" for i in range(256))


def geometry_dir_name(geometry: BlockGeometry) -> str:
    g = geometry
    return f"{GEOMETRY_PREFIX}L{g.num_layers}-T{g.block_tokens}-B{g.bytes_per_token_per_layer}"


def block_file_bytes(geometry: BlockGeometry, key_len: int = 64) -> int:
    """Size on disk of one block file (header page(s) + payload)."""
    return payload_offset(geometry, key_len) + geometry.full_block_bytes


def geometry_dirs(root: Path) -> list[Path]:
    """The geometry directories under `root` (any model, any block size)."""
    try:
        with os.scandir(root) as it:
            return [Path(e.path) for e in it
                    if e.name.startswith(GEOMETRY_PREFIX) and e.is_dir(follow_symlinks=False)]
    except FileNotFoundError:
        return []


def read_geometry(gdir: Path) -> BlockGeometry | None:
    """The geometry recorded in a geometry directory's metadata (None if unreadable)."""
    try:
        meta = json.loads((gdir / META_NAME).read_text())
        return BlockGeometry(**meta["geometry"])
    except (OSError, ValueError, KeyError, TypeError):
        return None


def private_mkdir(path: Path) -> None:
    """mkdir -p with owner-only permissions on every directory it creates."""
    path.mkdir(mode=DIR_MODE, parents=True, exist_ok=True)


def tighten(path: Path) -> None:
    """Make a directory we own owner-only if group or others have any access (logged)."""
    try:
        st = path.stat()
        if st.st_uid == os.getuid() and stat.S_IMODE(st.st_mode) & 0o077:
            os.chmod(path, DIR_MODE)
            logger.info("KV store directory %s was %o; now 0700", path, stat.S_IMODE(st.st_mode))
    except OSError as exc:
        logger.warning("cannot restrict permissions of %s: %s", path, exc)


def prepare(root: Path, geometry: BlockGeometry) -> Path:
    """Create (or migrate, or check) `root` and the directory of `geometry`; return the latter.

    Safe when several processes open the same root at once. Raises StoreError when the
    geometry directory's metadata says it holds another geometry or format.
    """
    private_mkdir(root)
    tighten(root)
    if (root / META_NAME).exists():
        from dualpath.kv.capacity import SizeLedger  # the root lock lives with the ledger

        with SizeLedger(root).locked():
            migrate_old_layout(root)
    gdir = root / geometry_dir_name(geometry)
    _write_meta_once(gdir, geometry)
    return gdir


def _write_meta_once(gdir: Path, geometry: BlockGeometry) -> None:
    meta_path = gdir / META_NAME
    want = {"format": FORMAT_NAME, "version": FORMAT_VERSION, "geometry": asdict(geometry)}
    if not meta_path.exists():
        private_mkdir(gdir)
        for name in FAN_OUT:  # up front, so puts never create directories
            (gdir / name).mkdir(mode=DIR_MODE, exist_ok=True)
        tmp = gdir / f".{META_NAME}.{os.getpid()}.{secrets.token_hex(4)}.tmp"
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, FILE_MODE)
        with os.fdopen(fd, "w") as f:
            f.write(json.dumps(want, indent=2) + "\n")
        try:
            os.link(tmp, meta_path)  # fails if another process created it first
        except FileExistsError:
            pass
        finally:
            block_io.unlink_quietly(tmp)
    try:
        have = json.loads(meta_path.read_text())
    except (ValueError, UnicodeDecodeError) as exc:
        raise StoreError(f"KV store metadata {meta_path} is unreadable: {exc}") from exc
    same_geometry = have.get("geometry") == want["geometry"]
    if have.get("format") != FORMAT_NAME or have.get("version") not in READABLE_VERSIONS \
            or not same_geometry:
        raise StoreError(
            f"KV store directory {gdir} holds {have.get('geometry')} (format "
            f"{have.get('format')} v{have.get('version')}), not {want['geometry']}; "
            "it was changed by hand or by an incompatible version")


def migrate_old_layout(root: Path) -> None:
    """Move an old single-geometry root into its geometry directory. Caller holds the lock."""
    old_meta = root / META_NAME
    try:
        have = json.loads(old_meta.read_text())
        geometry = BlockGeometry(**have["geometry"])
    except FileNotFoundError:
        return  # another process finished the migration first
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise StoreError(f"old-layout KV store {root} has unreadable metadata {old_meta}: {exc}; "
                         "move its contents aside or delete it") from exc
    gdir = root / geometry_dir_name(geometry)
    logger.warning("migrating KV store %s to one directory per geometry: its blocks move to %s",
                   root, gdir)
    private_mkdir(gdir)
    for name in (*FAN_OUT, QUARANTINE_DIR):
        src, dst = root / name, gdir / name
        if not src.is_dir():
            continue
        try:
            os.rename(src, dst)  # dst absent or empty: one rename moves every block
        except OSError:
            for entry in os.scandir(src):  # dst has blocks already: move them one by one
                with contextlib.suppress(OSError):
                    os.replace(entry.path, dst / entry.name)
            with contextlib.suppress(OSError):
                os.rmdir(src)
        tighten(dst)
    if not (gdir / META_NAME).exists():
        os.replace(old_meta, gdir / META_NAME)
    else:
        block_io.unlink_quietly(old_meta)
    for name in FAN_OUT:
        (gdir / name).mkdir(mode=DIR_MODE, exist_ok=True)


def block_names(gdir: Path, stale_temp_s: float) -> list[str]:
    """Names of the blocks stored in a geometry directory (listings only), sweeping temp
    files older than `stale_temp_s` (their writers died)."""
    found: list[str] = []
    now = time.time()
    for name in FAN_OUT:
        try:
            entries = os.scandir(gdir / name)
        except FileNotFoundError:
            continue
        with entries:
            for e in entries:
                if e.name.endswith(".kvb") and not e.name.startswith("."):
                    found.append(e.name[:-4])
                elif e.name.endswith(".tmp") and e.name.startswith("."):
                    block_io.sweep_if_stale(e.path, now, stale_temp_s)
    return found


def quarantine(gdir: Path, path: str, fd: int, block_hash: str, reason: str) -> Path | None:
    """Move a corrupt block file (open as `fd`) aside to `gdir/.quarantine/`, unless another
    writer already replaced it with a new one. Returns where it went, or None."""
    try:
        if os.stat(path).st_ino != os.fstat(fd).st_ino:
            return None
        qdir = gdir / QUARANTINE_DIR
        qdir.mkdir(mode=DIR_MODE, exist_ok=True)
        slug = re.sub(r"[^a-z0-9]+", "-", reason.lower()).strip("-")[:40]
        target = qdir / f"{block_hash}.{os.getpid()}.{time.time_ns()}.{slug}.kvb"
        os.replace(path, target)
    except OSError:
        return None
    return target


def valid_hash_name(name: str) -> bool:
    """Whether a file name stem looks like a block hash (4-128 lowercase hex chars)."""
    return 4 <= len(name) <= MAX_KEY_CHARS and all(c in "0123456789abcdef" for c in name)
