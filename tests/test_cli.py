"""The command's own machinery: re-running XLA commands with glibc's huge-page malloc."""

import os
import subprocess
import sys

import pytest
from conftest import run_jaxvoice

from jaxvoice import cli

PRINT_ENV = (
    "import os, sys; from jaxvoice import cli; cli.reexec_with_huge_pages(); "
    "print(os.getpid(), os.environ.get('GLIBC_TUNABLES'), sys.argv[1:])"
)


def env_without_tunables(**extra) -> dict:
    env = {k: v for k, v in os.environ.items() if k != "GLIBC_TUNABLES"}
    return {**env, **extra}


@pytest.mark.skipif(not cli.huge_pages_supported(), reason="no glibc huge-page malloc here")
def test_reexec_keeps_the_process_and_its_arguments():
    proc = subprocess.Popen(
        [sys.executable, "-c", PRINT_ENV, "a b", "--x"],
        env=env_without_tunables(),
        stdout=subprocess.PIPE,
        text=True,
    )
    out, _ = proc.communicate(timeout=120)
    pid, tunables, argv = out.split(" ", 2)
    assert int(pid) == proc.pid  # exec, not a child: signals and kills reach the work itself
    assert tunables == cli.HUGE_PAGE_TUNABLE
    assert argv.strip() == "['a b', '--x']"


def test_a_tunable_already_set_is_left_alone():
    out = subprocess.run(
        [sys.executable, "-c", PRINT_ENV], env=env_without_tunables(GLIBC_TUNABLES="glibc.malloc.check=0"),
        capture_output=True, text=True, check=True,
    ).stdout  # fmt: skip
    assert out.split(" ")[1] == "glibc.malloc.check=0"


def test_reexec_keeps_exit_code_and_the_one_line_error(tmp_path):
    proc = run_jaxvoice("eval", "--run", tmp_path / "missing", env=None)
    assert proc.returncode == 2
    assert proc.stderr.count("\n") == 1 and "missing" in proc.stderr
