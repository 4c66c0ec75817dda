"""Model specs on the command line: ``torchvision:resnet18`` or ``package.module:factory``."""
from __future__ import annotations

import importlib
import re
from typing import Any

from prunepass.errors import TraceError


def random_input(shape: tuple[int, ...]) -> Any:
    """A float32 example input of ``shape``, refused before allocating more than half the
    machine's memory."""
    import math
    import os
    import torch
    need = math.prod(shape) * 4
    try:
        have = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (OSError, ValueError):
        have = None
    if have and need > have // 2:
        raise TraceError(f"input shape {','.join(map(str, shape))} needs {need / 2**30:.1f} GiB "
                         f"as float32, more than half this machine's {have / 2**30:.0f} GiB")
    return torch.randn(*shape, generator=torch.Generator().manual_seed(0))


def parse_shape(text: str) -> tuple[int, ...]:
    try:
        shape = tuple(int(s) for s in re.split(r"[,x]", text.strip()))
    except ValueError:
        raise TraceError(f"input shape {text!r} is not a list of integers like 1,3,224,224") \
            from None
    if not shape or any(s <= 0 for s in shape):
        raise TraceError(f"input shape {text!r} must be positive integers like 1,3,224,224")
    return shape


def load_model(spec: str, input_shape: str | None = None) -> tuple[Any, tuple[Any, ...]]:
    """A (torch.nn.Module, example inputs) pair for a model spec. Weights are randomly
    initialised for zoo models (nothing is downloaded)."""
    import torch
    if ":" not in spec:
        raise TraceError(f"model {spec!r}: use torchvision:NAME or package.module:factory")
    where, name = spec.split(":", 1)
    shape = parse_shape(input_shape) if input_shape else None
    if where == "torchvision":
        import torchvision
        names = torchvision.models.list_models(module=torchvision.models)
        if name not in names:
            import difflib
            near = difflib.get_close_matches(name, names, n=3)
            raise TraceError(f"torchvision has no classifier {name!r}"
                             + (f"; did you mean {', '.join(near)}?" if near else ""))
        model = torchvision.models.get_model(name, weights=None).eval()
        return model, (random_input(shape or (1, 3, 224, 224)),)
    import os
    import sys
    if os.getcwd() not in sys.path:  # like `python -m`: modules of the current folder import
        sys.path.insert(0, os.getcwd())
    if not where or not name:
        raise TraceError(f"model {spec!r}: use package.module:factory (both parts named)")
    try:
        module = importlib.import_module(where)
    except ImportError as e:
        raise TraceError(f"model {spec!r}: cannot import {where!r} ({e})") from None
    except SyntaxError as e:
        raise TraceError(f"model {spec!r}: {e.filename}:{e.lineno}: syntax error: {e.msg}") \
            from None
    except Exception as e:  # the module's own code failed while importing
        raise TraceError(f"model {spec!r}: importing {where!r} raised "
                         f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}") \
            from e
    factory = getattr(module, name, None)
    if factory is None:
        raise TraceError(f"model {spec!r}: {where} has no attribute {name!r}")
    if not callable(factory):
        raise TraceError(f"model {spec!r}: {where}.{name} is a {type(factory).__name__}, "
                         "not a function that makes the model")
    try:
        made = factory()
    except TypeError as e:
        raise TraceError(f"model {spec!r}: {name}() must be callable without arguments "
                         f"({e})") from None
    except MemoryError:
        raise TraceError(f"model {spec!r}: {name}() ran out of memory") from None
    except Exception as e:  # the user's factory failed
        raise TraceError(f"model {spec!r}: {name}() raised {type(e).__name__}: "
                         f"{str(e).splitlines()[0] if str(e) else ''}") from e
    if isinstance(made, tuple) and len(made) == 2:
        model, inputs = made
        inputs = inputs if isinstance(inputs, (tuple, list, dict)) else (inputs,)
    else:
        model, inputs = made, None
    if shape is not None:
        inputs = (random_input(shape),)
    if inputs is None:
        raise TraceError(f"model {spec!r}: the factory returned no example inputs; pass "
                         "--input-shape or return (model, example_inputs)")
    if not isinstance(model, torch.nn.Module):
        raise TraceError(f"model {spec!r}: the factory returned {type(model).__name__}, "
                         "not a torch.nn.Module")
    return model.eval(), inputs
