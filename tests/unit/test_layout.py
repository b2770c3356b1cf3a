"""The pure layout rules (DESIGN §1): names, versions, the canonical link."""

from __future__ import annotations

import pytest

from drsync import layout
from drsync.errors import UnsafeInputError

# --- split of files/<name>_<version> ------------------------------------------------------------


@pytest.mark.parametrize(
    "dirname, expected",
    [
        ("tos_day_20100101", ("tos_day", "20100101")),
        ("thetao_20091023", ("thetao", "20091023")),
        ("a_b_c_1", ("a_b_c", "1")),
        ("x__2", ("x_", "2")),
        ("var_0_10", ("var_0", "10")),
    ],
)
def test_split_files_dir_at_last_underscore(dirname, expected):
    assert layout.split_files_dir(dirname) == expected
    assert layout.files_dir(*expected) == dirname


@pytest.mark.parametrize("dirname", ["tos", "_1", "tos_", "tos_v1", "tos_1e3", "tos_-1", "tos_1 ", "tos_day", "",
                                     "..", "a/b_1", "tos_" + "9" * 19])
def test_split_files_dir_rejects(dirname):
    with pytest.raises(UnsafeInputError) as ei:
        layout.split_files_dir(dirname)
    assert ei.value.exit_code == 4


# --- versions -----------------------------------------------------------------------------------


def test_plain_integer_versions_sort_numerically():
    assert layout.sort_versions(["10", "2", "1"]) == ["1", "2", "10"]
    assert layout.sort_versions(["20100101", "9", "20091023", "100"]) == ["9", "100", "20091023", "20100101"]
    assert layout.version_key("10") > layout.version_key("9")


@pytest.mark.parametrize("v", ["1", "2", "10", "20100101", "0", "9" * 18])
def test_check_version_accepts(v):
    assert layout.check_version(v) == v


@pytest.mark.parametrize("v", ["v1", "1e3", "-1", " 1", "1 ", "", "1.0", "+1", "0x10", "9" * 19, "1" * 40,
                               "\uff11", "١", "1\n", None, 1])
def test_check_version_rejects(v):
    with pytest.raises(UnsafeInputError) as ei:
        layout.check_version(v)
    assert ei.value.exit_code == 4


def test_version_dir_names():
    assert layout.is_version_dir("v20100101")
    assert layout.is_version_dir("v1")
    assert not layout.is_version_dir("v1e3")
    assert not layout.is_version_dir("v")
    assert not layout.is_version_dir("latest")
    assert not layout.is_version_dir("v" + "1" * 19)
    # malformed versions are recognised as such (so a scan can refuse them) ...
    assert layout.looks_like_version_dir("v1e3")
    assert layout.looks_like_version_dir("v20100101 ")
    # ... while ordinary names are not mistaken for versions
    assert not layout.looks_like_version_dir("version")
    assert not layout.looks_like_version_dir("v")
    assert not layout.looks_like_version_dir("files")


# --- the canonical link -------------------------------------------------------------------------


def test_canonical_target_form():
    assert layout.canonical_target("tos_day", "20100101", "f.nc") == "../../files/tos_day_20100101/f.nc"


@pytest.mark.parametrize(
    "target, name, file, version, expected",
    [
        ("../../files/x_1/f", "x", "f", "1", "x_1"),  # same version
        ("../../files/x_1/f", "x", "f", "2", "x_1"),  # carried over from an older version
        ("../../files/x_2/f", "x", "f", "10", "x_2"),  # numeric, not string, comparison
        ("../../files/tos_day_20100101/a.nc", "tos_day", "a.nc", "20100201", "tos_day_20100101"),
    ],
)
def test_parse_link_accepts_canonical(target, name, file, version, expected):
    assert layout.parse_link(target, name, file, version) == expected
    assert layout.canonical_target(*layout.split_files_dir(expected), file) == target


@pytest.mark.parametrize(
    "target",
    [
        "/abs/files/x_1/f",  # absolute
        "/../../files/x_1/f",
        "../../files/x_1/../../../out/f",  # `..` trick that still ends in /f
        "../../files/x_1/../x_1/f",
        "./../../files/x_1/f",  # `./`
        "../../files/./x_1/f",
        "../../files/x_1/./f",
        "../.././files/x_1/f",
        "../../files/x_1/f/",  # trailing `/`
        "../../files/x_1//f",
        "../../files//x_1/f",
        "../..//files/x_1/f",
        "../../files/y_1/f",  # other name
        "../../files/x_y_1/f",  # other name that starts with x_
        "../../files/xx_1/f",
        "../../files/x_3/f",  # later version
        "../../files/x_10/f",  # later version, although "10" < "9" as strings
        "../../files/x_1/g",  # other file
        "../../files/x_/f",
        "../../files/x_v1/f",
        "../../files/x_1e3/f",
        "../../other/x_1/f",
        "../files/x_1/f",
        "../../../files/x_1/f",
        "files/x_1/f",
        "",
    ],
)
def test_parse_link_rejects(target):
    version = "9" if target == "../../files/x_10/f" else "2"
    with pytest.raises(UnsafeInputError) as ei:
        layout.parse_link(target, "x", "f", version, dataset="ds")
    assert ei.value.exit_code == 4
    assert ei.value.dataset == "ds"


# --- names --------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["tos_day", "a.nc", "thetao_1.nc", "é", "-x", " lead", "a" * 255, "é" * 127,
                                  ".hidden", "..."])
def test_check_name_accepts(name):
    assert layout.check_name(name) == name


@pytest.mark.parametrize(
    "name",
    [
        "", ".", "..", "/", "a/b", "/a", "a/", "\\", "a\\b", "a\0b", "\0", "a\nb", "\n", "a\rb", "a\tb",
        "\x1b[31m", "a\x7f", ".drsync",
        "a" * 256,  # > 255 bytes
        "é" * 128,  # 128 characters, 256 bytes
        "bad\udcff",  # surrogate-escaped non-UTF-8 byte
        "\udc80",
        b"\xff".decode("utf-8", "surrogateescape"),
    ],
)
def test_check_name_rejects(name):
    with pytest.raises(UnsafeInputError) as ei:
        layout.check_name(name, "file name", dataset="ds")
    assert ei.value.exit_code == 4
    # the one-line message never carries the raw control characters
    assert "\n" not in ei.value.line() and "\0" not in ei.value.line()


def test_check_component_names_the_entrys_whole_path():
    assert layout.check_component("tas", "variable name", dataset="ds", where="v1/tas") == "tas"
    with pytest.raises(UnsafeInputError) as got:
        layout.check_component("..", "file name", dataset="ds", where="v1/tas/..")
    assert (got.value.path, got.value.dataset) == ("v1/tas/..", "ds")
    assert "unsafe file name" in str(got.value)


def test_check_name_rejects_non_string():
    with pytest.raises(UnsafeInputError):
        layout.check_name(b"abc")


def test_check_relpath():
    assert layout.check_relpath("") == ""
    assert layout.check_relpath("CMIP6/CMIP/a_b") == "CMIP6/CMIP/a_b"
    for bad in ["a//b", "a/../b", "/a", "a/", "a/./b", "a/.drsync/b", "a/\nb"]:
        with pytest.raises(UnsafeInputError):
            layout.check_relpath(bad)
