"""Saving keys.yaml never loses a hand edit: the writer lock, the last check, the undone swap."""
from __future__ import annotations

import fcntl
import os
import threading
import time
from pathlib import Path

import pytest

from uihelpers import CONFIG, ENV  # noqa: F401  (puts the real webui on sys.path)
from webui import atomicfile
from webui.atomicfile import Conflict, lock_path, locked, version_of, write_atomic
from webui.configfile import ConfigFile, EditedConfigError


@pytest.fixture
def path(tmp_path) -> Path:
    p = tmp_path / "keys.yaml"
    p.write_text(CONFIG)
    return p


def leftovers(directory: Path) -> list[str]:
    return sorted(p.name for p in directory.iterdir() if p.name not in ("keys.yaml", ".keys.yaml.lock"))


def test_the_lock_is_a_sidecar_every_writer_waits_for(path):
    assert lock_path(path) == path.parent / ".keys.yaml.lock"
    fd = os.open(lock_path(path), os.O_RDWR | os.O_CREAT)  # another "process": its own description
    fcntl.flock(fd, fcntl.LOCK_EX)
    done = threading.Event()
    t = threading.Thread(target=lambda: (write_atomic(path, CONFIG + "# ui\n", version_of(
        CONFIG.encode())), done.set()))
    t.start()
    try:
        assert not done.wait(0.3)  # blocked on the lock
        assert path.read_text() == CONFIG
    finally:
        os.close(fd)
    t.join(5)
    assert done.is_set() and path.read_text().endswith("# ui\n")


def test_a_change_before_the_swap_is_a_conflict(path, monkeypatch):
    real_temp = atomicfile._temp

    def temp_then_hand_edit(*a):
        tmp = real_temp(*a)
        with open(path, "a") as f:  # a hand edit between the first check and the swap
            f.write("# by hand\n")
        return tmp
    monkeypatch.setattr(atomicfile, "_temp", temp_then_hand_edit)
    with pytest.raises(Conflict):
        write_atomic(path, CONFIG + "# ui\n", version_of(CONFIG.encode()))
    assert path.read_text() == CONFIG + "# by hand\n"
    assert leftovers(path.parent) == []


@pytest.mark.parametrize("exchange", [True, False], ids=["renameat2", "os.replace"])
def test_a_writer_opening_the_file_during_the_swap_is_not_lost(path, monkeypatch, exchange):
    """A ``>>`` opens the file between the last look and the swap and writes after it."""
    if not exchange:
        monkeypatch.setattr(atomicfile, "_RENAMEAT2", None)
    real_check = atomicfile._check
    checks = []

    def hand():
        with open(path, "a") as f:  # blocks while the save holds its lease
            time.sleep(0.02)
            f.write("# by hand\n")

    def check_then_a_writer_opens(fd, *a):
        real_check(fd, *a)
        checks.append(1)
        if len(checks) == 2:  # the last look passed
            threading.Thread(target=hand).start()
            deadline = time.monotonic() + 2
            while fcntl.fcntl(fd, atomicfile._F_GETLEASE) == fcntl.F_RDLCK:
                assert time.monotonic() < deadline, "the writer never reached open()"
                time.sleep(0.001)
    monkeypatch.setattr(atomicfile, "_check", check_then_a_writer_opens)
    with pytest.raises(Conflict):
        write_atomic(path, CONFIG + "# ui\n", version_of(CONFIG.encode()))
    _wait_for(lambda: path.read_text() == CONFIG + "# by hand\n")
    assert leftovers(path.parent) == []


def test_a_writer_holding_the_file_open_is_waited_for(path, monkeypatch):
    """It had the file open before the save began and writes a moment later: Conflict."""
    real_check = atomicfile._check
    checks = []

    def check_then_write_later(*a):
        real_check(*a)
        checks.append(1)
        if len(checks) == 1:
            f = open(path, "a")
            threading.Timer(0.02, lambda: (f.write("# by hand\n"), f.close())).start()
    monkeypatch.setattr(atomicfile, "_check", check_then_write_later)
    with pytest.raises(Conflict):
        write_atomic(path, CONFIG + "# ui\n", version_of(CONFIG.encode()))
    assert path.read_text() == CONFIG + "# by hand\n"
    assert leftovers(path.parent) == []


def _wait_for(condition, timeout=5.0):
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "condition not met in time"
        time.sleep(0.005)


def test_edited_documents_are_not_cited_by_the_line_of_the_file(path):
    cf = ConfigFile(path, ENV)
    with pytest.raises(EditedConfigError) as e:
        cf.validate(CONFIG + "routing:\n  strategy: nope\n")
    assert str(e.value).startswith("in the edited keys.yaml, line ")
    path.write_text(CONFIG + "routing:\n  strategy: nope\n")
    assert cf.read().error.startswith(f"{path}:")  # the file on disk: its path and line


def _toggle(doc):
    item = doc.find("keys", "openai-1")
    item["enabled"] = not item.get("enabled", True)


def _race(path: Path, n: int, ui_write, pause_s: float) -> tuple[int, int]:
    """``n`` appends (as ``>>`` does, paced by ``pause_s``) against ``n`` UI writes."""
    appended = threading.Event()

    def hand():
        for i in range(n):
            with open(path, "a") as f:
                f.write(f"# hand edit {i}\n")
            time.sleep(pause_s)
        appended.set()

    t = threading.Thread(target=hand)
    t.start()
    saved = conflicts = 0
    stop = time.monotonic() + 25
    for _ in range(n):
        assert time.monotonic() < stop, "too slow"
        try:
            ui_write()
            saved += 1
        except Conflict:
            conflicts += 1
    assert appended.wait(10)
    t.join()
    lines = set(path.read_text().splitlines())
    lost = [i for i in range(n) if f"# hand edit {i}" not in lines]
    assert lost == [], f"{len(lost)} hand edits lost ({saved} saves, {conflicts} conflicts)"
    assert saved + conflicts == n and saved > 0
    assert leftovers(path.parent) == []
    return saved, conflicts


def test_1000_ui_writes_against_1000_appends_lose_nothing(path):
    """The write every UI save ends in, 1,000 times, while a script appends 1,000 lines."""
    def ui_write():  # read the version, change the file, save: the UI's save minus ruamel
        text, version = atomicfile.read(path)
        new = text.replace("rpm: 100 ", "rpm: 101 ") if "rpm: 100 " in text \
            else text.replace("rpm: 101 ", "rpm: 100 ")
        write_atomic(path, new, version)
    saved, conflicts = _race(path, 1000, ui_write, pause_s=0.0005)
    print(f"write_atomic: saved={saved} conflicts={conflicts}")


def test_ui_saves_through_configfile_against_appends_lose_nothing(path):
    """The whole save path (ruamel edit, validation, write), fewer times: it is slower."""
    cf = ConfigFile(path, ENV)

    def ui_write():
        cf.save(atomicfile.read(path)[1], _toggle)
    saved, conflicts = _race(path, 150, ui_write, pause_s=0.005)
    print(f"ConfigFile.save: saved={saved} conflicts={conflicts}")


def test_the_form_names_the_edited_document_not_the_file(signed_in, config_path):
    import html
    r = signed_in.post("/keys/new", {"enabled": "1", "name": "x-1", "provider": "nosuch",
                                     "key": "sk-1234567890"})
    page = html.unescape(r.get_data(as_text=True))
    assert r.status_code == 400 and "in the edited keys.yaml, line " in page
    assert f"{config_path}:" not in page
