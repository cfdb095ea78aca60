"""The residual CNN of test_residual_cnn.py: conv + BatchNorm stem, a residual block, pooling, a linear head.

3x12x12 inputs, 10 classes; AdamW with a LinearLR warm-up, then cosine
(SequentialLR). Three ranks with uneven micro-batches: 5 and 7 samples, 3,
and 6, 2 and 4 (27 a window).
"""
import torch
import torch.nn as nn
import torch.nn.functional as F

MICRO_BATCHES = [[5, 7], [3], [6, 2, 4]]
WINDOW = sum(sum(r) for r in MICRO_BATCHES)
WINDOWS = 15


class ResidualCNN(nn.Module):

    def __init__(self):
        super().__init__()
        self.stem = nn.Conv2d(3, 8, 3, padding=1, bias=False)
        self.bn0 = nn.BatchNorm2d(8)
        self.conv1 = nn.Conv2d(8, 8, 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(8)
        self.conv2 = nn.Conv2d(8, 8, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(8)
        self.fc = nn.Linear(8, 10)

    def forward(self, x):
        h = F.relu(self.bn0(self.stem(x)))
        r = F.relu(self.bn1(self.conv1(h)))
        r = self.bn2(self.conv2(r))
        h = F.relu(h + r)
        return self.fc(F.adaptive_avg_pool2d(h, 1).flatten(1))


def make(seed=3):
    """(model, AdamW, warm-up + cosine scheduler), seeded."""
    torch.manual_seed(seed)
    model = ResidualCNN()
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3, weight_decay=0.05, eps=1e-7)
    lrs = torch.optim.lr_scheduler
    scheduler = lrs.SequentialLR(optimizer, [lrs.LinearLR(optimizer, start_factor=0.2, total_iters=3),
                                             lrs.CosineAnnealingLR(optimizer, T_max=WINDOWS - 3)], milestones=[3])
    return model, optimizer, scheduler


def window_data(t):
    g = torch.Generator().manual_seed(500 + t)
    return torch.randn((WINDOW, 3, 12, 12), generator=g), torch.randint(0, 10, (WINDOW,), generator=g)


def micro_batches(t, rank):
    """Rank `rank`'s micro-batches of window t: [(x, y)]."""
    x, y = window_data(t)
    start = sum(sum(r) for r in MICRO_BATCHES[:rank])
    out = []
    for n in MICRO_BATCHES[rank]:
        out.append((x[start:start + n], y[start:start + n]))
        start += n
    return out


def reference():
    """One process, the same micro-batches in rank order (BatchNorm statistics per micro-batch), each
    loss weighted by its share of the window's samples, then torch.optim's step and the scheduler."""
    torch.set_num_threads(1)
    model, optimizer, scheduler = make()
    for t in range(WINDOWS):
        optimizer.zero_grad()
        for rank in range(len(MICRO_BATCHES)):
            for x, y in micro_batches(t, rank):
                (F.cross_entropy(model(x), y) * (len(x) / WINDOW)).backward()
        optimizer.step()
        scheduler.step()
    return {n: p.detach().numpy().copy() for n, p in model.named_parameters()}


def write_job(path):
    import gradacc.torch
    model, optimizer, scheduler = make()
    return gradacc.torch.write_job(path, model, optimizer, scheduler, workers=len(MICRO_BATCHES), micro_batches=2,
                                   micro_batch_size=WINDOW // 6, total_steps=WINDOWS, job_id="residual")[0]
