"""The workdir's file layer (`resnet_jax.storage.files`): no links followed, atomic
replacement, JSON lines that survive a crash mid-write."""
import json
import os

import pytest

from resnet_jax.storage import files

LOCAL = files.LocalFiles()


@pytest.fixture
def victim(tmp_path):
  path = tmp_path / "elsewhere.txt"
  path.write_text("precious\n")
  return path


def test_a_link_is_refused_for_reading_writing_and_appending(tmp_path, victim):
  link = tmp_path / "config.json"
  link.symlink_to(victim)
  for action in (lambda: LOCAL.read_text(link), lambda: LOCAL.write_atomic(link, "{}"),
                 lambda: files.JsonlAppender(link), lambda: LOCAL.append_jsonl(link, {"a": 1}),
                 lambda: files.open_file(link, os.O_RDWR | os.O_CREAT)):
    with pytest.raises(files.NotAFileError, match=rf"{link} is a symbolic link \(to {victim}\)"):
      action()
  assert victim.read_text() == "precious\n" and link.is_symlink()


def test_a_dangling_link_is_refused_not_created_through(tmp_path):
  target = tmp_path / "created-through-the-link"
  link = tmp_path / "metrics.jsonl"
  link.symlink_to(target)
  with pytest.raises(files.NotAFileError):
    files.JsonlAppender(link)
  assert not target.exists()


def test_a_fifo_or_directory_is_refused_without_blocking(tmp_path):
  fifo = tmp_path / "metrics.jsonl"
  os.mkfifo(fifo)
  with pytest.raises(files.NotAFileError, match="is a FIFO"):
    files.JsonlAppender(fifo)  # a plain open for writing would wait for a reader forever
  with pytest.raises(files.NotAFileError, match="is a directory"):
    LOCAL.read_text(tmp_path)


def test_write_atomic_replaces_the_whole_file_and_leaves_no_temporary(tmp_path):
  path = tmp_path / "workdir.json"
  LOCAL.write_json(path, {"format": 1})
  LOCAL.write_atomic(path, "new\n")
  assert path.read_text() == "new\n"
  assert [p.name for p in tmp_path.iterdir()] == ["workdir.json"]


def test_write_atomic_failure_keeps_the_old_file(tmp_path, monkeypatch):
  path = tmp_path / "config.json"
  path.write_text("old\n")

  def full_disk(fd, data):
    raise OSError(28, "No space left on device")
  monkeypatch.setattr(os, "write", full_disk)
  with pytest.raises(files.WorkdirWriteError, match=rf"cannot write {path}: No space left on device"):
    LOCAL.write_atomic(path, "new\n")
  monkeypatch.undo()
  assert path.read_text() == "old\n" and [p.name for p in tmp_path.iterdir()] == ["config.json"]


def test_a_torn_last_line_is_skipped_and_reported_and_appends_start_a_fresh_line(tmp_path):
  path = tmp_path / "metrics.jsonl"
  path.write_text(json.dumps({"step": 1}) + "\n" + '{"step": 2, "lo')  # the crash cut the second record
  reports = []
  assert LOCAL.read_jsonl(path, reports.append) == [{"step": 1}]
  assert reports == [f"{path}: skipped 1 line(s) that are not complete records, cut short by a crash (line 2)"]
  appender = files.JsonlAppender(path, reports.append)
  appender.append({"step": 3})
  appender.close()
  assert "last line was cut short" in reports[-1]
  assert path.read_text().splitlines() == ['{"step": 1}', '{"step": 2, "lo', '{"step": 3}']
  assert LOCAL.read_jsonl(path) == [{"step": 1}, {"step": 3}]
  assert LOCAL.read_jsonl(tmp_path / "missing.jsonl") == []


def test_json_digest_ignores_key_order_and_tuple_vs_list():
  assert files.json_digest({"a": (1, 2), "b": 0.1}) == files.json_digest({"b": 0.1, "a": [1, 2]})
  assert files.json_digest({"a": [1, 2]}) != files.json_digest({"a": [1, 3]})
