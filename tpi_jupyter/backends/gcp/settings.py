"""The GCP backend's traitlets settings: `%config GcpSettings.project = "my-project"` in a
notebook, or `c.GcpSettings.project = "my-project"` in an IPython config file."""

from __future__ import annotations

import os

from traitlets import Unicode
from traitlets.config import Configurable


class GcpSettings(Configurable):  # type: ignore[misc]
    project = Unicode("", help="Google Cloud project id; wins over GOOGLE_CLOUD_PROJECT and ADC").tag(
        config=True
    )


def settings() -> GcpSettings:
    """The settings of the running IPython (registered, so `%config` reaches them), else defaults."""
    try:
        from IPython import get_ipython
    except ImportError:  # a machine or a bare client: no IPython
        return GcpSettings()
    shell = get_ipython()
    if shell is None:
        return GcpSettings()
    for configurable in shell.configurables:
        if isinstance(configurable, GcpSettings):
            return configurable
    found = GcpSettings(parent=shell)
    shell.configurables.append(found)
    return found


def configured_project(adc_project: str | None = None) -> str:
    """The project: the traitlets setting, else GOOGLE_CLOUD_PROJECT, else the credentials' own."""
    return str(settings().project or os.environ.get("GOOGLE_CLOUD_PROJECT") or adc_project or "")
