"""memtrack.py — peak tensor memory of a block of code, on CUDA and on the CPU, for bench/.

    with PeakMemory(device, base=state_bytes(model, optimizer)) as m:
        ...                                   # one phase of an RL round
    print(m.peak / 2**30, "GiB")              # state + the largest extra tensor bytes alive at once

CUDA: torch.cuda.max_memory_allocated after reset_peak_memory_stats (the allocator's own count of
live tensor bytes; `base` is ignored, the allocator already holds the state).

CPU: the process's resident size mixes tensors with the allocator's caches, the interpreter and
other processes' pressure, so tensors are counted instead: a TorchDispatchMode sees every aten op;
an output whose storage is new (not one of the op's inputs' storages: views and in-place ops
allocate nothing) adds its bytes until Python frees that storage (a weak reference's callback).
Storage resizes (FSDP2 frees and re-allocates its unsharded weights with resize_) are followed too.
Tensors that exist before the block are not seen: pass their bytes as `base` (state_bytes). This
is the CPU analogue of max_memory_allocated, without the CUDA allocator's rounding to blocks.
"""
import weakref

import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten


def _tensors(tree):
    return [t for t in tree_flatten(tree)[0] if isinstance(t, torch.Tensor)]


def _local(t):
    """The local tensor of a DTensor (an FSDP2 shard), else the tensor itself."""
    return t.to_local() if hasattr(t, "to_local") else t


def state_bytes(*objects):
    """Bytes of the distinct storages of the parameters, buffers and gradients of modules, the
    state of optimizers and plain tensors among `objects` (the memory held between phases)."""
    seen, total = set(), 0

    def add(t):
        nonlocal total
        if isinstance(t, torch.Tensor):
            st = _local(t).untyped_storage()
            if id(st) not in seen and st.nbytes():
                seen.add(id(st))
                total += st.nbytes()

    for obj in objects:
        if isinstance(obj, torch.nn.Module):
            for p in obj.parameters():
                add(p)
                add(p.grad)
            for b in obj.buffers():
                add(b)
        elif isinstance(obj, torch.optim.Optimizer):
            for state in obj.state.values():
                for t in _tensors(state):
                    add(t)
        else:
            for t in _tensors(obj):
                add(t)
    return total


class _LiveStorages(TorchDispatchMode):
    """Counts bytes of storages created while active (see the module docstring)."""

    def __init__(self):
        super().__init__()
        self.current = self.peak = 0
        self.sizes = {}  # id(storage) -> bytes counted for it
        self.refs = {}   # id(storage) -> weak reference (keeps the callback alive)

    def _forget(self, key):
        self.current -= self.sizes.pop(key, 0)
        self.refs.pop(key, None)

    def _count(self, st, nbytes):
        key = id(st)
        self.current += nbytes - self.sizes.get(key, 0)
        self.sizes[key] = nbytes
        if key not in self.refs:
            self.refs[key] = weakref.ref(st, lambda _, key=key: self._forget(key))
        self.peak = max(self.peak, self.current)

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        if any(getattr(t, "__name__", "") == "DTensor" for t in types):
            return NotImplemented  # let DTensor unwrap to its local tensors, which come back here
        out = func(*args, **(kwargs or {}))
        # a storage object stands for its memory (PyTorch keeps one Python object per storage, which
        # also works for the FakeTensors of memory_plan.py, whose storages have no address)
        inputs = {id(t.untyped_storage()) for t in _tensors((args, kwargs))}
        for t in _tensors(out):
            st = t.untyped_storage()
            if st.nbytes() and id(st) not in inputs and id(st) not in self.sizes:
                self._count(st, st.nbytes())
        return out

    def resized(self, st, old_bytes):
        """A storage changed size in place: count the difference (also for storages made earlier)."""
        key = id(st)
        if key in self.sizes:
            self._count(st, st.nbytes())
        else:  # made before the block: its old bytes are part of `base`
            self.current -= old_bytes
            self._count(st, st.nbytes())


class PeakMemory:
    """Context manager: `.peak` = bytes of tensors alive at the busiest moment of the block (see the
    module docstring); `.base` = what was alive at entry (CUDA: measured; CPU: as passed)."""

    def __init__(self, device, base=0):
        self.device = torch.device(device)
        self.base = base
        self.peak = None

    @property
    def current(self):
        """CPU, inside the block: bytes counted now above `base` (tensors made inside, still alive)."""
        return self._mode.current

    @property
    def highest(self):
        """CPU, inside the block: the largest `current` so far."""
        return self._mode.peak

    def __enter__(self):
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            torch.cuda.reset_peak_memory_stats(self.device)
            self.base = torch.cuda.memory_allocated(self.device)
            return self
        self._mode = _LiveStorages()
        self._resize = torch.UntypedStorage.resize_
        mode, resize = self._mode, self._resize

        def resize_(st, size):
            old = st.nbytes()
            result = resize(st, size)
            mode.resized(st, old)
            return result

        torch.UntypedStorage.resize_ = resize_
        self._mode.__enter__()
        return self

    def __exit__(self, *exc):
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            self.peak = torch.cuda.max_memory_allocated(self.device)
            return False
        self._mode.__exit__(*exc)
        torch.UntypedStorage.resize_ = self._resize
        self.peak = self.base + self._mode.peak
        return False
