"""Configuration: the model (:mod:`lb.config.model`) and its loader (:mod:`lb.config.loader`).

This package imports no trio, httpx or prometheus_client: it is plain data and validation,
usable by the engine, the simulator and ``tunnel-lb check`` alike.
"""

from lb.config.errors import ConfigError, Problem
from lb.config.loader import LoadResult, load_config, load_config_text
from lb.config.model import Config

__all__ = ["Config", "ConfigError", "LoadResult", "Problem", "load_config", "load_config_text"]
