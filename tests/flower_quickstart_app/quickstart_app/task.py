"""Model, data and training loops (what a quickstart's task.py holds)."""

import torch
from torch import nn

CLASSES = 3
FEATURES = 8


class Net(nn.Module):
    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.fc1 = nn.Linear(FEATURES, 16)
        self.fc2 = nn.Linear(16, CLASSES)

    def forward(self, x):
        return self.fc2(torch.relu(self.fc1(x)))


def _blobs(n, seed):
    gen = torch.Generator().manual_seed(seed)
    centers = torch.tensor([[2.0] * 4 + [0.0] * 4, [0.0] * 4 + [2.0] * 4, [-2.0] * 8])
    y = torch.randint(0, CLASSES, (n,), generator=gen)
    return centers[y] + torch.randn(n, FEATURES, generator=gen), y


def load_data(partition_id, num_partitions, batch_size):
    X, y = _blobs(64, 100 + int(partition_id))
    Xt, yt = _blobs(32, 1000 + int(partition_id))
    train = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(X, y), batch_size=batch_size, shuffle=True,
                                        generator=torch.Generator().manual_seed(int(partition_id)))
    test = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(Xt, yt), batch_size=batch_size)
    return train, test


def load_centralized_testset():
    X, y = _blobs(300, 7)
    return torch.utils.data.DataLoader(torch.utils.data.TensorDataset(X, y), batch_size=100)


def train(net, trainloader, epochs, lr):
    opt = torch.optim.SGD(net.parameters(), lr=lr)
    net.train()
    total = 0.0
    for _ in range(epochs):
        for X, y in trainloader:
            opt.zero_grad()
            loss = nn.functional.cross_entropy(net(X), y)
            loss.backward()
            opt.step()
            total += loss.item()
    return total / (epochs * len(trainloader))


def test(net, testloader):
    net.eval()
    loss, correct, per_class, count = 0.0, 0, [0] * CLASSES, [0] * CLASSES
    with torch.no_grad():
        for X, y in testloader:
            out = net(X)
            loss += nn.functional.cross_entropy(out, y, reduction="sum").item()
            pred = out.argmax(1)
            correct += (pred == y).sum().item()
            for c in range(CLASSES):
                per_class[c] += ((pred == y) & (y == c)).sum().item()
                count[c] += (y == c).sum().item()
    n = len(testloader.dataset)
    return loss / n, correct / n, [p / max(c, 1) for p, c in zip(per_class, count)]
