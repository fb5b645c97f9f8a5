"""The package's shape, as the cache redesign left it: imports point down, no module switches on a policy's or a
cache's type, every policy's cache is fed and read the same way, a cache's layers hold nothing of the cache, and the
model carries nothing of streamlib's."""

import gc
import importlib.util
import weakref
from pathlib import Path

import pytest
import torch

from streamlib.caches.generation import forward_chunks, stream_generate
from streamlib.metrics.memory import kv_cache_bytes
from streamlib.policies import H2O, TOVA, BurstEviction, Dense, Recompute, StreamingLLM, Window

from conftest import make_peaky_model

ROOT = Path(__file__).resolve().parent.parent
_spec = importlib.util.spec_from_file_location("check_structure", ROOT / "scripts" / "check_structure.py")
structure = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(structure)

BOUNDED = [Window(12), StreamingLLM(4, 12), StreamingLLM(4, 12, pos_shift=False), TOVA(12), H2O(4, 8),
           BurstEviction(4, 16, 0.5)]  # the caches made of layers of slots
POLICIES = [Dense(), Recompute(12)] + BOUNDED


def test_the_import_graph_has_no_cycle():
    graph = structure.import_graph()
    assert "streamlib.caches.base" in graph and graph["streamlib.caches.generation"]  # the graph was read
    assert structure.cycles(graph) == []


def test_cycles_are_found():
    """The check itself: a loop of three modules is one component."""
    graph = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}
    assert structure.cycles(graph) == [["a", "b", "c"]]


def test_folders_import_only_from_below_and_modules_stay_short():
    graph = structure.import_graph()
    assert {structure.folder_of(m) for m in graph} - {None} == set(structure.FOLDERS)  # every folder is placed
    assert structure.upward_imports(graph) == []
    assert structure.long_modules() == []


def test_an_upward_import_and_a_long_module_are_found(tmp_path):
    """The checks themselves: a cache importing a policy, a folder nobody placed, a module of too many lines."""
    graph = {"streamlib.caches.x": {"streamlib.policies.y"}, "streamlib.policies.y": {"streamlib.caches.x"},
             "streamlib.nowhere.z": set(), "streamlib.workbook": {"streamlib.cli.main"}}
    assert structure.upward_imports(graph) == [
        "streamlib.caches.x imports streamlib.policies.y, from a folder above its own",
        "streamlib.nowhere.z: its folder 'nowhere' has no place in FOLDERS"]
    package = tmp_path / "streamlib"
    package.mkdir()
    (package / "long.py").write_text("x = 1\n" * (structure.MAX_LINES + 1))
    assert structure.long_modules(package) == [f"streamlib/long.py: {structure.MAX_LINES + 1} lines"]


def test_no_policy_kind_is_named_outside_its_file():
    """Nothing outside streamlib/policies/ compares a string to a policy's name: the registry answers."""
    import ast

    from streamlib.policies import registered

    names = {cls.name for cls in registered()}
    found = []
    for path in (ROOT / "streamlib").rglob("*.py"):
        if "policies" in path.parts:
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Compare):
                for side in [node.left, *node.comparators]:
                    if isinstance(side, ast.Constant) and side.value in names:
                        found.append(f"{path.relative_to(ROOT)}:{node.lineno}")
            elif isinstance(node, ast.Dict):  # selectors such as {"policy": "dense"}
                found += [f"{path.relative_to(ROOT)}:{node.lineno}" for v in node.values
                          if isinstance(v, ast.Constant) and v.value in names]
    assert found == []


def test_no_module_switches_on_a_policy_or_cache_type():
    assert structure.type_switches() == []


def test_a_switch_on_a_type_is_found(tmp_path):
    package = tmp_path / "streamlib"
    package.mkdir()
    (package / "caches.py").write_text("class PolicyCache:\n    def kv_bytes(self):\n        pass\n"
                                       "class Mine(PolicyCache):\n    pass\n")
    (package / "user.py").write_text("from .caches import Mine\n\ndef f(c):\n    return isinstance(c, Mine)\n"
                                     "\ndef g(c):\n    return hasattr(c, 'kv_bytes')\n")
    found = structure.type_switches(package, tmp_path)
    assert [line.split(":")[0] for line in found] == ["streamlib/user.py", "streamlib/user.py"]


@pytest.mark.parametrize("policy", POLICIES, ids=lambda p: p.label())
def test_every_cache_is_fed_and_read_the_same_way(peaky_model, policy):
    """One interface for every policy, Recompute's window of ids included: feed a stream past the budget, then ask
    each layer what it holds and the cache what its keys and values take."""
    ids = torch.randint(0, peaky_model.config.vocab_size, (1, 40), generator=torch.Generator().manual_seed(0))
    cache = policy.make_cache(peaky_model)
    with torch.inference_mode():
        fed = sum(logits.shape[1] for _, logits in forward_chunks(peaky_model, ids, cache, chunk_size=16))
    assert fed == 40
    held = cache.held_by_layer()
    assert len(held) == cache.num_layers == peaky_model.config.num_hidden_layers
    budget = policy.budget if policy.budget is not None else 40
    assert all(h.shape[-1] <= budget and int(h.max()) == 39 for h in held)
    allocated, resident = cache.kv_bytes()
    assert kv_cache_bytes(cache) == allocated >= resident > 0


@pytest.mark.parametrize("policy", BOUNDED, ids=lambda p: p.label())
def test_layers_hold_nothing_of_their_cache(peaky_model, policy):
    """A layer owns its settings: after a stream, no attribute of a layer is its cache (they read no attribute of it
    on the hot path because they have none to read)."""
    cache = policy.make_cache(peaky_model)
    ids = torch.randint(0, peaky_model.config.vocab_size, (1, 30), generator=torch.Generator().manual_seed(1))
    with torch.inference_mode():
        for _ in forward_chunks(peaky_model, ids, cache, chunk_size=8):
            pass
    for layer in cache.layers:
        assert all(value is not cache for value in vars(layer).values())
        assert layer.spec is cache.spec and layer.budget == policy.budget


def test_the_model_carries_nothing_of_streamlib():
    """Compiled decoding keeps its decoder beside the model, not on it, and lets it go with the model."""
    from streamlib.caches.compiled import compiled_decoder

    model = make_peaky_model("sdpa")
    before = dict(vars(model))
    stream_generate(model, torch.arange(1, 30)[None], StreamingLLM(4, 12), 3, compile=True)
    assert compiled_decoder(model) is compiled_decoder(model)
    assert set(vars(model)) == set(before) and not any(k.startswith("_streamlib") for k in vars(model))
    gone = weakref.ref(model)
    del model
    gc.collect()
    assert gone() is None
