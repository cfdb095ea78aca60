"""Which samples go where: gradacc-worker's data order, for Python workers.

The same rule as ``worker/training/data_order.h`` (docs/operations.md, "Which sample
goes where"): with N samples, seed S, M workers and K micro-batches of b
samples, a window holds B = M*K*b samples and an epoch ceil(N/B) windows
(the last one short); epoch e shuffles 0..N-1 with a seeded Fisher-Yates
(key = splitmix64(S xor splitmix64(e+1)), position i swapped with
splitmix64(key+i) mod (i+1)); micro-batch k of worker r (slot s = r*K + k)
of a window of R samples gets the permuted positions
[floor(s*R/(M*K)), floor((s+1)*R/(M*K))). So 1x8, 2x4 and 4x2 workers x
micro-batches see the same samples in every window, micro-batches differ by
at most one sample, and a short last window gives some slots fewer (or no)
samples.
"""
import numpy as np

__all__ = ["WindowPlan", "epoch_permutation", "splitmix64"]

_MASK = (1 << 64) - 1


def splitmix64(z):
    """The splitmix64 finaliser (job.proto), on a Python int or a uint64 array."""
    if isinstance(z, np.ndarray):
        z = z.astype(np.uint64)
        with np.errstate(over="ignore"):
            z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
            z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
        return z ^ (z >> np.uint64(31))
    z &= _MASK
    z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & _MASK
    z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & _MASK
    return z ^ (z >> 31)


def epoch_permutation(seed, epoch, n):
    """The order of samples 0..n-1 in `epoch` (gradacc's EpochPermutation)."""
    key = splitmix64(seed ^ splitmix64(epoch + 1))
    i = np.arange(n - 1, 0, -1, dtype=np.uint64)
    with np.errstate(over="ignore"):
        j = (splitmix64(np.uint64(key) + i) % (i + np.uint64(1))).tolist()
    perm = list(range(n))
    for a, b in zip(range(n - 1, 0, -1), j):
        perm[a], perm[b] = perm[b], perm[a]
    return np.array(perm, dtype=np.int64)


class WindowPlan:
    """The samples of each rank's micro-batches, window by window.

    Args:
      num_samples: N, the training set's size.
      world_size, micro_batches, micro_batch_size: M, K and b.
      seed: the job's seed (the order differs per epoch).
    """

    def __init__(self, num_samples, world_size, micro_batches, micro_batch_size, seed=0):
        self.num_samples = int(num_samples)
        self.world_size = int(world_size)
        self.micro_batches = int(micro_batches)
        self.micro_batch_size = int(micro_batch_size)
        self.seed = int(seed)
        self.window_samples = self.world_size * self.micro_batches * self.micro_batch_size
        self.windows_per_epoch = -(-self.num_samples // self.window_samples)
        self._perm_epoch = None
        self._perm = None

    def _permutation(self, epoch):
        if self._perm_epoch != epoch:
            self._perm = epoch_permutation(self.seed, epoch, self.num_samples)
            self._perm_epoch = epoch
        return self._perm

    def window(self, t):
        """All samples of window t (in slot order)."""
        epoch, j = divmod(int(t), self.windows_per_epoch)
        base = j * self.window_samples
        size = min(self.window_samples, self.num_samples - base)
        return self._permutation(epoch)[base:base + size]

    def micro_batches_of(self, t, rank):
        """The K index arrays of `rank`'s micro-batches in window t (some may be empty)."""
        samples = self.window(t)
        size = len(samples)
        slots = self.world_size * self.micro_batches
        out = []
        for k in range(self.micro_batches):
            s = rank * self.micro_batches + k
            out.append(samples[s * size // slots:(s + 1) * size // slots])
        return out
