"""--models-dir: absolute or under ~, in the spellings the shell and the probe need."""

from __future__ import annotations

import pytest

from mlctl import shell
from mlctl.errors import UsageError
from mlctl.remote_paths import ModelsDir, models_dir


@pytest.mark.parametrize(
    ("given", "layout", "probe"),
    [
        ("/workspace/models", "/workspace/models", "/workspace/models"),
        ("/data//models/", "/data/models", "/data/models"),
        ("~/models", "$HOME/models", "~/models"),
        ("~/a/./b/../c", "$HOME/a/c", "~/a/c"),
        ("~", "$HOME", "~"),
        ("/mnt/with space/it's", "/mnt/with space/it's", "/mnt/with space/it's"),
    ],
)
def test_accepted(given: str, layout: str, probe: str) -> None:
    assert models_dir(given) == ModelsDir(given, layout, probe)


@pytest.mark.parametrize(
    ("given", "says"),
    [
        ("models", "is not an absolute path"),
        ("./models", "is not an absolute path"),
        ("", "is empty"),
        ("/", "cannot be the root directory"),
        ("~/../etc", "leaves your home directory"),
        ("$HOME/models", "newline, NUL or '$'"),
        ("/data/$(reboot)", "newline, NUL or '$'"),
        ("/data/a\nb", "newline, NUL or '$'"),
    ],
)
def test_refused_with_the_option_and_the_fix(given: str, says: str) -> None:
    with pytest.raises(UsageError) as info:
        models_dir(given)
    assert info.value.message.startswith("--models-dir") and says in info.value.message
    assert "/workspace/models" in (info.value.hint or "")


def test_the_shell_spelling_expands_home_and_nothing_else() -> None:
    assert shell.quote(models_dir("~/my models").layout_path) == "\"$HOME\"'/my models'"
    assert shell.quote(models_dir("/x/it's").layout_path) == "'/x/it'\"'\"'s'"
