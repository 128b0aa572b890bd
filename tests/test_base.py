"""The base layer: one registry style, one atomic write, one URI redactor."""

from __future__ import annotations

import os

import pytest

from whichmodel.files import atomic_path, atomic_write, atomic_write_json
from whichmodel.registry import Registry, UnknownNameError
from whichmodel.uri import redact_uri


def test_registry_registers_by_decorator_in_order_and_lists_known_names_on_a_miss():
    reg = Registry("widget")

    @reg.register("b")
    def make_b():
        """Makes b."""

    reg.register("a", "entry-a")
    assert reg.names() == ["b", "a"] and "a" in reg and len(reg) == 2
    assert reg.get("b") is make_b and reg.get("a") == "entry-a"
    with pytest.raises(UnknownNameError) as err:
        reg.get("c")
    assert str(err.value) == "unknown widget 'c'; known: b, a"
    assert isinstance(err.value, KeyError) and isinstance(err.value, ValueError)


def test_registry_refuses_a_name_twice_unless_replacing():
    reg = Registry("widget")
    reg.register("a", 1)
    with pytest.raises(ValueError, match="widget 'a' is already registered"):
        reg.register("a", 2)
    reg.register("a", 3, replace=True)
    assert reg.get("a") == 3
    reg.unregister("a")
    assert "a" not in reg


def test_atomic_write_replaces_the_file_and_leaves_no_temporary_on_failure(tmp_path):
    target = tmp_path / "sub" / "out.txt"
    atomic_write(target, "one")
    atomic_write(target, b"two")
    assert target.read_text() == "two"
    assert oct(target.stat().st_mode & 0o777) == oct(0o644)
    with pytest.raises(RuntimeError):
        with atomic_path(target) as tmp:
            tmp.write_text("partial")
            raise RuntimeError("writer failed")
    assert target.read_text() == "two"
    assert sorted(os.listdir(target.parent)) == ["out.txt"]
    atomic_write_json(tmp_path / "x.json", {"b": 1, "a": 2})
    assert (tmp_path / "x.json").read_text() == '{\n  "a": 2,\n  "b": 1\n}\n'


@pytest.mark.parametrize("uri, shown", [
    ("http://admin:s3cret@127.0.0.1:5000", "http://***@127.0.0.1:5000"),
    ("postgresql://mlflow:pw@db:5432/mlflow", "postgresql://***@db:5432/mlflow"),
    ("https://TOKEN@host/path?x=1", "https://***@host/path?x=1"),
    ("sqlite:////tmp/mlflow.db", "sqlite:////tmp/mlflow.db"),
    ("/plain/path", "/plain/path"),
])
def test_redact_uri_hides_credentials_and_keeps_the_rest(uri, shown):
    assert redact_uri(uri) == shown
