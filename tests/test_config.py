"""The Receiver's options are declared once, in ``Config``: the signatures users
type them into (``Receiver``, ``create_server``, ``create_connection``) keep
their keyword arguments, with their names and docs, and are held to ``Config``
here: the same names, the same defaults. Everything else forwards a Config
(``Config.receiver_options()``)."""

from __future__ import annotations

import dataclasses
import inspect

import pytest

from aiozcrx.config import Config


def _fields() -> dict[str, object]:
    return {f.name: f.default for f in dataclasses.fields(Config)}


def _keywords(fn: object, *, skip: tuple[str, ...] = ()) -> dict[str, object]:
    sig = inspect.signature(fn)  # type: ignore[arg-type]
    return {name: p.default for name, p in sig.parameters.items()
            if name not in ("self", *skip) and p.kind is not inspect.Parameter.VAR_KEYWORD}


def test_receiver_takes_every_option_of_config_with_its_default():
    from aiozcrx.receiver import Receiver
    assert _keywords(Receiver.__init__, skip=("share_with",)) == _fields()


@pytest.mark.parametrize("name", ["create_server", "create_connection"])
def test_servers_name_their_receiver_keywords_with_configs_defaults(name):
    from aiozcrx import server
    keywords = _keywords(getattr(server, name))
    fields = _fields()
    named = {k: v for k, v in keywords.items() if k in fields}
    # exactly the ones RECEIVER_KEYWORDS lists (aiozcrx.anyio under trio takes those
    # too), with Config's defaults; the others go in receiver_options=
    assert set(named) == set(server.RECEIVER_KEYWORDS)
    assert named == {k: fields[k] for k in server.RECEIVER_KEYWORDS}
    assert "receiver_options" in keywords


def test_receiver_options_round_trip():
    from aiozcrx.receiver import Receiver
    cfg = Config(engine="socket", area_size=1 << 20, buf_size=4096, views="opt-in", max_held=1 << 16,
                 over_share="pause")
    assert cfg.receiver_options() == dataclasses.asdict(cfg)
    rx = Receiver(**cfg.receiver_options())
    assert rx._config == cfg.validate()


def test_drop_in_loop_forwards_the_whole_config_to_create_server():
    from aiozcrx.loop import _receiver_kwargs
    from aiozcrx.server import RECEIVER_KEYWORDS
    cfg = Config(engine="uring", buf_size=8192, views="opt-in", max_held=1 << 20, wake="socket")
    kw = _receiver_kwargs(cfg)
    options = kw.pop("receiver_options")
    assert set(kw) == set(RECEIVER_KEYWORDS) and not set(kw) & set(options)
    assert Config(**kw, **options) == cfg
