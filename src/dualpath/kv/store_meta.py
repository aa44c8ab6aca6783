"""The file store's root metadata: format and geometry, written once by the first opener."""

from __future__ import annotations

import json
import os
import secrets
from dataclasses import asdict
from pathlib import Path

from dualpath.core.errors import StoreError
from dualpath.kv import block_file, block_io
from dualpath.kv.layout import BlockGeometry

META_NAME = "dualpath-kvstore.json"


def check_store_meta(root: Path, geometry: BlockGeometry) -> None:
    """Record the geometry on first open; refuse to open a root made for another geometry."""
    meta_path = root / META_NAME
    want = {"format": "dualpath-kv-file-store", "version": block_file.FORMAT_VERSION,
            "geometry": asdict(geometry)}
    if not meta_path.exists():
        # The 256 fan-out directories up front: puts then never create directories.
        for i in range(256):
            (root / f"{i:02x}").mkdir(exist_ok=True)
        tmp = root / f".{META_NAME}.{os.getpid()}.{secrets.token_hex(4)}.tmp"
        tmp.write_text(json.dumps(want, indent=2) + "\n")
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
    if have != want:
        raise StoreError(
            f"KV store at {root} was created for {have.get('geometry')} "
            f"(format {have.get('format')} v{have.get('version')}), not {asdict(geometry)}; "
            "use a separate root per model / block size"
        )
