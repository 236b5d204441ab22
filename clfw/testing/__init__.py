"""clfw.testing: the contract checks clfw runs on its own strategies, for yours.

::

    from clfw.testing import check_strategy

    def test_my_strategy(tmp_path):
        check_strategy("mylab.MyStrategy", {"weight": 0.5}, tmp_path=tmp_path)

:func:`check_strategy` trains the strategy (or a plugin, on ``clfw.strategies.Naive``) on a tiny synthetic stream in
every scenario it supports, checks its train/eval-mode hygiene, its composition with the Refresh plugin and a replay
memory, a bit-exact resume from the middle of a task and identical replicas under 2-process DDP. Each check is named
in :data:`CHECKS`, so a pytest suite can parametrize over them. The pieces the checks run on (:class:`TinyStream`,
:func:`fit`, :func:`snapshot`, :func:`assert_same_state`, :class:`Interrupt`, :class:`ReplayPlugin`) are exported for
tests of your own. See docs/writing-a-strategy.md.
"""

from clfw.testing.checks import (
    CHECKS,
    COMPANIONS,
    PLUGIN_HOST,
    TINY_DEFAULTS,
    ContractError,
    build_model,
    check_ddp,
    check_replicas,
    check_strategy,
    compose,
    ddp_results,
    import_class,
    model_config,
    preferred_scenario,
    run_ddp,
    tiny_stream,
)
from clfw.testing.fixtures import Interrupt, ReplayPlugin, TinyStream, assert_same_state, fit, snapshot

__all__ = [
    "CHECKS",
    "COMPANIONS",
    "PLUGIN_HOST",
    "TINY_DEFAULTS",
    "ContractError",
    "Interrupt",
    "ReplayPlugin",
    "TinyStream",
    "assert_same_state",
    "build_model",
    "check_ddp",
    "check_replicas",
    "check_strategy",
    "compose",
    "ddp_results",
    "fit",
    "import_class",
    "model_config",
    "preferred_scenario",
    "run_ddp",
    "snapshot",
    "tiny_stream",
]
