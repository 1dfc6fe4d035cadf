"""The GCP project as a traitlets setting, set with `%config` in a real IPython shell."""

from __future__ import annotations

from pathlib import Path

import pytest
from IPython import get_ipython
from IPython.testing.globalipapp import start_ipython

from tpi_jupyter.backends.gcp.settings import configured_project, settings


def test_config_magic_sets_the_project_and_it_wins_over_the_environment(
    tpi_home: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    shell = start_ipython() or get_ipython()
    shell.run_line_magic("load_ext", "tpi_jupyter")
    monkeypatch.setenv("GOOGLE_CLOUD_PROJECT", "from-env")
    settings()  # registered with the shell, so %config reaches it
    try:
        assert configured_project("from-adc") == "from-env"
        shell.run_line_magic("config", 'GcpSettings.project = "from-config"')
        assert configured_project("from-adc") == "from-config"
        # the requests a dry run would send are in that project
        shell.run_cell_magic("tpi", "cloud=gcp name=settings --dry-run --json", "echo hi")
        assert "from-config" in capsys.readouterr().out
    finally:
        shell.run_line_magic("config", 'GcpSettings.project = ""')
    monkeypatch.delenv("GOOGLE_CLOUD_PROJECT")
    assert configured_project("from-adc") == "from-adc"
    assert configured_project() == ""
