"""What a stranger could drop in the profiles folder or serve as a feed, made for real: the
files and the bodies the tests feed to digest, each with what digest must say about it."""

from __future__ import annotations

import os
import zlib
from functools import cache
from pathlib import Path

# profile file name -> (a pattern its one-line error must match after "<path>")
HOSTILE_PROFILES = {
    "bomb": r":\d+: more than 20,000 values once YAML aliases are expanded",
    "huge": r": larger than 1,024 KiB, too large for a profile file",
    "fifo": r": is not a regular file \(a FIFO, socket or device\)",
    "zero": r": is not a regular file \(a FIFO, socket or device\)",
    "folder": r": is a directory, not a profile file",
    "latin1": r":3: not UTF-8 text: byte 0xe9 at column 12",
    "deep": r":3: lists and mappings nested more than 16 deep",
    "selfref": r":3: the alias \*a is inside the value it names",
    "long": r":3: interests: at most 200 entries \(this list has 201\)",
}


def billion_laughs(levels: int = 9, width: int = 9) -> str:
    """A profile whose last list stands for width**levels strings (9 x 9: 387 million)."""
    lines = ["name: Laughs", "email: laughs@example.org",
             "lol0: &l0 [" + ", ".join(["lol"] * width) + "]"]
    for level in range(1, levels):
        lines.append(f"lol{level}: &l{level} [" + ", ".join([f"*l{level - 1}"] * width) + "]")
    lines.append("interests: *l" + str(levels - 1))
    return "\n".join(lines) + "\n"


def write_hostile_profiles(folder: Path) -> list[Path]:
    """Every HOSTILE_PROFILES case, as `<name>.yaml` in `folder`."""
    folder.mkdir(parents=True, exist_ok=True)
    bodies = {
        "bomb": billion_laughs(),
        # 550,000 interests, about 12 MB: far past the size cap.
        "huge": "name: Huge\nemail: huge@example.org\ninterests:\n"
                + "".join(f"  - interest number {i}\n" for i in range(550_000)),
        "deep": "name: Deep\nemail: deep@example.org\ninterests: "
                + "[" * 100_000 + "]" * 100_000 + "\n",
        "selfref": "name: Self\nemail: self@example.org\ninterests: &a [x, *a]\n",
        "long": "name: Long\nemail: long@example.org\ninterests:\n"
                + "".join(f"  - topic {i}\n" for i in range(201)),
    }
    for name, text in bodies.items():
        (folder / f"{name}.yaml").write_text(text, encoding="utf-8")
    (folder / "latin1.yaml").write_bytes(
        "name: Latin\nemail: latin@example.org\navoid: [café]\n".encode("latin-1"))
    os.mkfifo(folder / "fifo.yaml")
    (folder / "zero.yaml").symlink_to("/dev/zero")
    (folder / "folder.yaml").mkdir()
    return [folder / f"{name}.yaml" for name in HOSTILE_PROFILES]


@cache
def gzip_bomb(inflated: int = 1024 ** 3) -> bytes:
    """A gzip body of about 1 MB that inflates to `inflated` bytes of zeros."""
    packer = zlib.compressobj(9, zlib.DEFLATED, 16 + zlib.MAX_WBITS)
    block = bytes(1024 * 1024)
    parts = [packer.compress(block) for _ in range(inflated // len(block))]
    parts.append(packer.flush())
    return b"".join(parts)


def deflate(body: bytes, *, raw: bool) -> bytes:
    """`Content-Encoding: deflate` as servers send it: zlib-wrapped, or raw."""
    packer = zlib.compressobj(6, zlib.DEFLATED, -zlib.MAX_WBITS if raw else zlib.MAX_WBITS)
    return packer.compress(body) + packer.flush()


# A feed cut off in its first <item> tag: a feed by its version, with no entry to read.
UNCLOSED_ITEM = (b'<?xml version="1.0"?><rss version="2.0"><channel><title>Papers</title>'
                 b'<item')
