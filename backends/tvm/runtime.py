"""Run an exported library with the TVM runtime, here or on a remote device."""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

from prunepass.backends.tvm.errors import BackendError
from prunepass.backends.tvm.lower import TensorSpec


@dataclass
class LoadedModel:
    """A library loaded into a Relax VirtualMachine on a device (local or remote)."""
    vm: Any
    device: Any
    inputs: list[TensorSpec]

    def to_device(self, arrays: Sequence[Any]) -> list[Any]:
        """Copy numpy arrays or torch tensors to the device, checking them against the inputs
        the model was compiled for."""
        import numpy as np
        import tvm
        if len(arrays) != len(self.inputs):
            raise BackendError(f"the model takes {len(self.inputs)} input(s) "
                               f"({', '.join(i.name for i in self.inputs)}), got {len(arrays)}")
        out = []
        for spec, array in zip(self.inputs, arrays):
            array = np.ascontiguousarray(array.detach().cpu().numpy() if hasattr(array, "detach")
                                         else array)
            if tuple(array.shape) != spec.shape or array.dtype.name != spec.dtype:
                raise BackendError(f"input {spec.name} was compiled for {spec.dtype}"
                                   f"{list(spec.shape)}, got {array.dtype.name}"
                                   f"{list(array.shape)}")
            out.append(tvm.runtime.tensor(array, device=self.device))
        return out

    def __call__(self, *arrays: Any) -> list[Any]:
        """Run once; returns every output as a numpy array."""
        result = self.vm["main"](*self.to_device(arrays))
        return [t.numpy() for t in _flatten(result)]


def load_library(library: str | Path, device: str, inputs: list[TensorSpec],
                 session: Any | None = None) -> LoadedModel:
    """Load ``library`` here, or on the remote behind ``session`` (tvm.rpc.RPCSession)."""
    import tvm
    from tvm import relax
    if session is not None:
        from prunepass.backends.tvm.rpc import remote_vm
        vm, dev = remote_vm(session, str(library), device)
        return LoadedModel(vm, dev, inputs)
    dev = tvm.cuda(0) if device == "cuda" else tvm.cpu(0)
    if not dev.exist:
        raise BackendError(f"this machine has no {device} device to run {library} on; run it "
                           f"on one through an RPC tracker")
    try:
        module = tvm.runtime.load_module(str(library))
    except RuntimeError as err:
        raise BackendError(f"the TVM runtime cannot load {library}: "
                           f"{str(err).splitlines()[0]}") from err
    return LoadedModel(relax.VirtualMachine(module, dev), dev, inputs)


def load_compiled(metadata: str | Path, session: Any | None = None) -> LoadedModel:
    """Load an artifact from the JSON that compile_model wrote beside the library."""
    metadata = Path(metadata)
    data = json.loads(metadata.read_text())
    inputs = [TensorSpec(i["name"], tuple(i["shape"]), i["dtype"]) for i in data["inputs"]]
    return load_library(metadata.parent / data["library"], data["target"]["device"], inputs,
                        session)


def _flatten(value: Any) -> list[Any]:
    """The VM returns a Tensor or a (nested) tuple of them."""
    if hasattr(value, "numpy"):
        return [value]
    return [t for item in value for t in _flatten(item)]
