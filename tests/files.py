"""What tests compare directories by: every saved file's sha256, by path."""

import hashlib
from pathlib import Path


def digests(root: Path) -> dict[str, str]:
    """Every saved file under root, by content; not a token cache (it may gain entries) nor a
    run's .lock (rewritten by each trainer that opens the run; saved data is not)."""
    return {
        str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(Path(root).rglob("*"))
        if p.is_file() and p.name != ".lock" and "cache" not in p.relative_to(root).parts
    }
