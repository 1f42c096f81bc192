"""Red team 6: the host's file verbs with text no file name or file can hold. A path with a
lone surrogate outside surrogateescape's range (`"\\ud800"`; `"\\udcff"` names the byte
0xff) passed `normalize` and raised an untyped UnicodeEncodeError where the provider encoded
it (`beneath.open_beneath`'s `os.fsencode`, the walk's `os.open`), and so did `write_file`'s
text data with one (`data.encode()`): out of `Kernel.read_file` / `write_file`, not typed,
nothing recorded (invariant 18; 17: the name checked is the name used). Severity: low (the
host's own verbs; a process's arguments with one are refused at the dispatcher). Now
`InvalidArgument`."""

from __future__ import annotations

from pathlib import Path

import pytest

from broker import InvalidArgument, Kernel
from broker.caps import normalize


@pytest.mark.parametrize("path", ["/pub/\ud800", "/pub/a\udfff/b.txt", "/pub/\udc7f"])
async def test_a_path_no_file_name_can_hold_is_refused_typed(tmp_path: Path, path: str) -> None:
    fs = tmp_path / "fs"
    (fs / "pub").mkdir(parents=True)
    (fs / "pub" / "ok.txt").write_text("ok")
    with pytest.raises(InvalidArgument, match="no file name"):
        normalize(path)
    async with Kernel.open(tmp_path / "db", fs_root=fs) as kernel:
        with pytest.raises(InvalidArgument, match="no file name"):
            kernel.read_file(path)
        with pytest.raises(InvalidArgument, match="no file name"):
            kernel.write_file(path, "x")
        refused = [r for r in kernel.audit() if r["phase"] == "rejected"]
        assert [r["syscall"] for r in refused] == ["host.fs.read", "host.fs.write"]
        assert "\ufffd" in refused[0]["resource"]  # (shown as the store can keep it)
        # The neighbours: a name of the byte 0xff is a name; a plain one is read.
        assert normalize("/pub/\udcff").parts[-1] == "\udcff"
        assert kernel.read_file("/pub/ok.txt") == "ok"
        assert kernel.verify_audit()[1] == []
    assert sorted(p.name for p in (fs / "pub").iterdir()) == ["ok.txt"]


async def test_text_data_no_file_can_hold_is_refused_typed_on_the_record(tmp_path: Path) -> None:
    async with Kernel.open(tmp_path / "db", fs_root=tmp_path / "fs") as kernel:
        with pytest.raises(InvalidArgument, match="not Unicode"):
            kernel.write_file("/out.txt", "a\ud800b")
        last = kernel.audit()[-1]
        assert (last["syscall"], last["phase"]) == ("host.fs.write", "rejected")
        assert kernel.write_file("/out.txt", "a\u00e9b") == 4  # the neighbour
        assert kernel.read_file("/out.txt") == "a\u00e9b"
        assert kernel.verify_audit()[1] == []
    assert not (tmp_path / "fs" / "out.txt").read_bytes().count(b"\xed")
