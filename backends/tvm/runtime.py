"""Run an exported library with the TVM runtime, here or on a remote device."""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

from prunepass.backends.tvm.errors import BackendError, LibraryError
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
                 session: Any | None = None, *, kernels: Sequence[str] | None = None
                 ) -> LoadedModel:
    """Load ``library`` here, or on the remote behind ``session`` (tvm.rpc.RPCSession).

    kernels: the library kernel functions (prunepass.blas.*) the model calls, from its
    metadata; they are loaded from the extension beside ``library`` when this process does
    not have them yet, and a LibraryError names that file when they cannot be. None: read
    them from the loaded library."""
    import tvm
    from tvm import relax
    library = Path(library)
    if session is not None:
        if kernels:
            raise LibraryError(f"{library} calls library kernels ({', '.join(kernels)}), "
                               f"which run only where they were built; run it here, not over "
                               f"RPC")
        from prunepass.backends.tvm.rpc import remote_vm
        vm, dev = remote_vm(session, str(library), device)
        return LoadedModel(vm, dev, inputs)
    dev = tvm.cuda(0) if device == "cuda" else tvm.cpu(0)
    if not dev.exist:
        raise BackendError(f"this machine has no {device} device to run {library} on; run it "
                           f"on one through an RPC tracker")
    if kernels:
        _load_kernels(library, kernels)
    try:
        module = tvm.runtime.load_module(str(library))
    except RuntimeError as err:
        from prunepass.backends.tvm.library import LIBRARY_NAME
        if LIBRARY_NAME in str(err):  # linked to the kernels, which are not beside it
            raise LibraryError(f"{library} needs the library kernels "
                               f"{library.parent / LIBRARY_NAME}, which cannot be loaded "
                               f"({str(err).splitlines()[0]}): ship the files its metadata "
                               f"lists (library_kernels.files) beside {library.name}") from err
        raise BackendError(f"the TVM runtime cannot load {library}: "
                           f"{str(err).splitlines()[0]}") from err
    if kernels is None:
        from prunepass.backends.tvm.library import required_libraries
        kernels = required_libraries(module)
    if kernels:  # before the VirtualMachine, whose error names only the function
        from prunepass.backends.tvm.library import LIBRARY_NAME, check_loaded
        check_loaded(kernels, library.parent / LIBRARY_NAME)
    return LoadedModel(relax.VirtualMachine(module, dev), dev, inputs)


def _load_kernels(library: Path, kernels: Sequence[str]) -> None:
    """Make sure the library kernels ``kernels`` are registered in this process: loaded from
    the extension beside ``library`` if not; otherwise a LibraryError names that file."""
    from prunepass.backends.tvm.library import LIBRARY_NAME, check_loaded, load_extension
    extension = library.parent / LIBRARY_NAME
    try:
        check_loaded(kernels, extension)
        return
    except LibraryError:
        if not extension.exists():
            raise LibraryError(f"{library} calls {', '.join(kernels)}, provided by the "
                               f"library {extension}, which is missing: ship the files its "
                               f"metadata lists (library_kernels.files) beside "
                               f"{library.name}") from None
    load_extension(extension)  # its own LibraryError names the file and what is missing
    check_loaded(kernels, extension)


def load_compiled(metadata: str | Path, session: Any | None = None) -> LoadedModel:
    """Load an artifact from the JSON that compile_model wrote beside the library."""
    metadata = Path(metadata)
    data = json.loads(metadata.read_text())
    inputs = [TensorSpec(i["name"], tuple(i["shape"]), i["dtype"]) for i in data["inputs"]]
    kernels = (data.get("library_kernels") or {}).get("functions", [])
    return load_library(metadata.parent / data["library"], data["target"]["device"], inputs,
                        session, kernels=kernels)


def _flatten(value: Any) -> list[Any]:
    """The VM returns a Tensor or a (nested) tuple of them."""
    if hasattr(value, "numpy"):
        return [value]
    return [t for item in value for t in _flatten(item)]
