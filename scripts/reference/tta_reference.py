#!/usr/bin/env python3
"""PyTorch reference outputs for Attune's test-time adaptation methods.

Runs each method's loss and one adaptation step (two for EATA, whose redundancy filter needs a
previous batch, and for PETAL, whose prior term is zero at the first step) in PyTorch on a fixed tiny BatchNorm CNN and batch, written the way the methods'
official code writes them, and saves inputs, weights and outputs as one small JSON fixture that
`engine/src/methods/reference_tests.rs` matches (logits and updated parameters, 1e-4).

Regenerate (needs torch; any CPU build works):
    python3 -m venv /tmp/torchenv && /tmp/torchenv/bin/pip install torch numpy
    /tmp/torchenv/bin/python scripts/reference/tta_reference.py
The fixture is engine/tests/fixtures/tta_reference.json; commit it with the change that needed it.

Randomness that the two sides cannot share is passed in as data: DeYO's patch permutations,
the augmented views of CoTTA/PETAL/RMT (`views`), CoTTA's stochastic-restore masks, RMT's
projector initialization and UnMix-TNS's initial components.

The tiny model mirrors Attune's `cnn` architecture with channels [4, 8] on 12×12 inputs:
normalize (x − 0.3)/0.2 → conv3×3(1→4, no bias) → BN → ReLU → maxpool 2 → conv3×3(4→8) → BN →
ReLU → flatten (8·6·6) → linear(288 → 5).
"""
import json
import math
import os

import torch
import torch.nn as nn
import torch.nn.functional as F

torch.manual_seed(0)
torch.set_default_dtype(torch.float32)
C = 5
OUT = os.path.join(os.path.dirname(__file__), "..", "..", "engine", "tests", "fixtures", "tta_reference.json")


class Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.c1 = nn.Conv2d(1, 4, 3, padding=1, bias=False)
        self.b1 = nn.BatchNorm2d(4)
        self.c2 = nn.Conv2d(4, 8, 3, padding=1, bias=False)
        self.b2 = nn.BatchNorm2d(8)
        self.fc = nn.Linear(8 * 6 * 6, C)

    def features(self, x):
        x = (x - 0.3) / 0.2
        h = F.max_pool2d(F.relu(self.b1(self.c1(x))), 2)
        return F.relu(self.b2(self.c2(h))).flatten(1)

    def forward(self, x):
        return self.fc(self.features(x))


NAMES = {
    "c1.weight": "features.0.0.conv.weight",
    "b1.weight": "features.0.0.bn.weight",
    "b1.bias": "features.0.0.bn.bias",
    "b1.running_mean": "features.0.0.bn.running_mean",
    "b1.running_var": "features.0.0.bn.running_var",
    "c2.weight": "features.1.0.conv.weight",
    "b2.weight": "features.1.0.bn.weight",
    "b2.bias": "features.1.0.bn.bias",
    "b2.running_mean": "features.1.0.bn.running_mean",
    "b2.running_var": "features.1.0.bn.running_var",
    "fc.weight": "fc.weight",
    "fc.bias": "fc.bias",
}
BN_AFFINE = [k for k in NAMES if k.startswith("b") and k.endswith(("weight", "bias"))]


def flat(t):
    return [float(v) for v in t.detach().reshape(-1).tolist()]


def images(n, seed):
    """Images in [0, 1] that are exact multiples of 1/255 (Attune's clean sets are u8)."""
    g = torch.Generator().manual_seed(seed)
    u8 = (0.4 + 0.2 * torch.randn(n, 1, 12, 12, generator=g)).clamp(0, 1).mul(255).round()
    return u8 / 255.0, [int(v) for v in u8.reshape(-1).tolist()]


def source_model(scale):
    torch.manual_seed(1)
    m = Net()
    with torch.no_grad():
        m.fc.weight.mul_(scale)
        m.fc.bias.mul_(scale)
        for bn in (m.b1, m.b2):
            bn.weight.uniform_(0.6, 1.4)
            bn.bias.uniform_(-0.2, 0.2)
        # Non-trivial running statistics, as a trained model has.
        m.train()
        for s in range(3):
            m(images(32, 100 + s)[0])
    m.eval()
    return m


def configure_batch_stats(m):
    """TENT/EATA/SAR/DeYO's configure_model: train mode, BN without running statistics, only the
    BN affine parameters require gradients."""
    m.train()
    for p in m.parameters():
        p.requires_grad_(False)
    for bn in (m.b1, m.b2):
        bn.track_running_stats = False
        bn.running_mean = None
        bn.running_var = None
        bn.weight.requires_grad_(True)
        bn.bias.requires_grad_(True)
    return m


def bn_params(m):
    return [m.b1.weight, m.b1.bias, m.b2.weight, m.b2.bias]


def affine_state(m):
    return {NAMES[k]: flat(getattr(getattr(m, k.split(".")[0]), k.split(".")[1])) for k in BN_AFFINE}


def entropy(logits):
    return -(logits.softmax(1) * logits.log_softmax(1)).sum(1)


x, _ = images(16, 7)
x2, _ = images(16, 8)
clean, clean_u8 = images(64, 9)

# Scale the classifier so that the entropy filters keep part of the batch, not none or all.
best = None
for scale in [1, 2, 3, 4, 5, 6, 8, 10, 12, 15, 20]:
    m = configure_batch_stats(source_model(scale))
    with torch.no_grad():
        frac = (entropy(m(x)) < 0.4 * math.log(C)).float().mean().item()
    if best is None or abs(frac - 0.5) < abs(best[1] - 0.5):
        best = (scale, frac)
SCALE = best[0]
src = source_model(SCALE)
fixture = {
    "classes": C,
    "x": flat(x),
    "x2": flat(x2),
    "clean_u8": clean_u8,
    "clean_labels": [i % C for i in range(64)],
    "weights": {NAMES[k]: flat(v) for k, v in src.state_dict().items() if k in NAMES},
    "cases": {},
}
cases = fixture["cases"]

# source and norm_test / norm_alpha ---------------------------------------------------------
with torch.no_grad():
    cases["source"] = {"spec": "source", "logits": flat(src(x))}
    m = configure_batch_stats(source_model(SCALE))
    cases["norm_test"] = {"spec": "norm_test", "logits": flat(m(x))}


def alpha_bn_forward(m, x, alpha):
    """α-BN: normalize with (1 − α)·running + α·batch statistics (biased batch variance)."""
    def bn(layer, h):
        mu = h.mean((0, 2, 3))
        var = h.var((0, 2, 3), unbiased=False)
        mean = (1 - alpha) * layer.running_mean + alpha * mu
        v = (1 - alpha) * layer.running_var + alpha * var
        # Written out (F.batch_norm refuses statistics that carry gradients; Core needs them).
        h = (h - mean.view(1, -1, 1, 1)) / torch.sqrt(v.view(1, -1, 1, 1) + layer.eps)
        return h * layer.weight.view(1, -1, 1, 1) + layer.bias.view(1, -1, 1, 1)

    h = (x - 0.3) / 0.2
    h = F.max_pool2d(F.relu(bn(m.b1, m.c1(h))), 2)
    h = F.relu(bn(m.b2, m.c2(h))).flatten(1)
    return m.fc(h)


with torch.no_grad():
    cases["norm_alpha"] = {
        "spec": {"method": "norm_alpha", "alpha": 0.1},
        "logits": flat(alpha_bn_forward(source_model(SCALE), x, 0.1)),
    }

# tent -------------------------------------------------------------------------------------
m = configure_batch_stats(source_model(SCALE))
opt = torch.optim.Adam(bn_params(m), lr=1e-3, betas=(0.9, 0.999), weight_decay=0.0)
out = m(x)
loss = entropy(out).mean(0)
loss.backward()
opt.step()
opt.zero_grad()
cases["tent"] = {"spec": "tent", "logits": flat(out), "loss": loss.item(), "after": affine_state(m)}

# tent + crowds ----------------------------------------------------------------------------
m = configure_batch_stats(source_model(SCALE))
opt = torch.optim.Adam(bn_params(m), lr=1e-3)
out = m(x)
with torch.no_grad():
    src_conf = src(x).softmax(1).max(1).values
keep = out.softmax(1).max(1).values.detach() >= src_conf
loss = entropy(out)[keep].mean(0)
loss.backward()
opt.step()
opt.zero_grad()
cases["tent_crowds"] = {
    "spec": "crowds",
    "logits": flat(out),
    "kept": int(keep.sum()),
    "after": affine_state(m),
}

# eata -------------------------------------------------------------------------------------
E0 = 0.4 * math.log(C)
m = configure_batch_stats(source_model(SCALE))
fishers = {}
for i in range(4):  # 64 clean images in batches of 16
    xb = clean[16 * i: 16 * (i + 1)]
    o = m(xb)
    loss = F.cross_entropy(o, o.max(1)[1])
    loss.backward()
    for k, p in zip(BN_AFFINE, bn_params(m)):
        f = p.grad.detach().clone() ** 2
        fishers[k] = f if i == 0 else fishers[k] + f
    for p in bn_params(m):
        p.grad = None
fishers = {k: (v / 4, getattr(getattr(m, k.split(".")[0]), k.split(".")[1]).detach().clone()) for k, v in fishers.items()}
FISHER_ALPHA = 50.0
# SGD rather than Adam here: Adam's first steps are blind to a common scale of the loss, so the
# confidence weights would go untested.
LR = 0.01
opt = torch.optim.SGD(bn_params(m), lr=LR, momentum=0.9)
probs_ema = None


def eata_step(xb, d_margin):
    global probs_ema
    out = m(xb)
    ent = entropy(out)
    ids1 = torch.where(ent < E0)[0]
    ent = ent[ids1]
    kept = out[ids1].softmax(1).detach()
    if probs_ema is not None:
        cos = F.cosine_similarity(probs_ema.unsqueeze(0), kept, dim=1)
        ids2 = torch.where(cos.abs() < d_margin)[0]
        ent = ent[ids2]
        kept = kept[ids2]
    if kept.shape[0] > 0:
        probs_ema = kept.mean(0) if probs_ema is None else 0.9 * probs_ema + 0.1 * kept.mean(0)
    coeff = 1 / torch.exp(ent.clone().detach() - E0)
    loss = (ent * coeff).mean(0)
    ewc = 0
    for k, p in zip(BN_AFFINE, bn_params(m)):
        ewc = ewc + FISHER_ALPHA * (fishers[k][0] * (p - fishers[k][1]) ** 2).sum()
    loss = loss + ewc
    if kept.shape[0] > 0:
        loss.backward()
        opt.step()
    opt.zero_grad()
    return out, int(kept.shape[0])


# d_margin: chosen so that the redundancy filter drops part of the second batch.
with torch.no_grad():
    o1 = m(x)
    first = o1[entropy(o1) < E0].softmax(1)
    ema0 = first.mean(0)
    o2 = m(x2)
    second = o2[entropy(o2) < E0].softmax(1)
    cos = F.cosine_similarity(ema0.unsqueeze(0), second, dim=1).abs().sort().values
    D_MARGIN = float((cos[len(cos) // 2 - 1] + cos[len(cos) // 2]) / 2)
out1, kept1 = eata_step(x, D_MARGIN)
after1 = affine_state(m)
out2, kept2 = eata_step(x2, D_MARGIN)
cases["eata"] = {
    "spec": {"method": "eata", "optimizer": {"name": "sgd", "lr": LR, "momentum": 0.9}, "d_margin": D_MARGIN, "fisher_alpha": FISHER_ALPHA, "fisher_size": 64},
    "fisher_batch_size": 16,
    "logits": flat(out1),
    "kept": kept1,
    "after": after1,
    "logits2": flat(out2),
    "kept2": kept2,
    "after2": affine_state(m),
}

# sar --------------------------------------------------------------------------------------
m = configure_batch_stats(source_model(SCALE))
RHO = 0.05
opt = torch.optim.SGD(bn_params(m), lr=LR, momentum=0.9)
out = m(x)
ent = entropy(out)
ids1 = torch.where(ent < E0)
loss = ent[ids1].mean(0)
loss.backward()
with torch.no_grad():  # SAM first step
    gn = torch.norm(torch.stack([p.grad.norm(p=2) for p in bn_params(m)]), p=2)
    scale = RHO / (gn + 1e-12)
    olds = []
    for p in bn_params(m):
        olds.append(p.data.clone())
        p.add_(p.grad * scale)
opt.zero_grad()
ent2 = entropy(m(x))[ids1]
ids2 = torch.where(ent2 < E0)
loss2 = ent2[ids2].mean(0)
loss2.backward()
with torch.no_grad():  # SAM second step
    for p, o in zip(bn_params(m), olds):
        p.data = o
opt.step()
opt.zero_grad()
cases["sar"] = {
    "spec": {"method": "sar", "optimizer": {"name": "sgd", "lr": LR, "momentum": 0.9}, "rho": RHO, "reset_constant": 0.0},
    "logits": flat(out),
    "kept": int(len(ids2[0])),
    "after": affine_state(m),
}

# deyo -------------------------------------------------------------------------------------
m = configure_batch_stats(source_model(SCALE))
opt = torch.optim.SGD(bn_params(m), lr=LR, momentum=0.9)
GRID, PLPD_T = 4, 0.2
out = m(x)
ent = entropy(out)
ids1 = torch.where(ent < 0.5 * math.log(C))
ent = ent[ids1]
xp = x[ids1].detach()
n1 = xp.shape[0]
gperm = torch.Generator().manual_seed(5)
perm_idx = torch.argsort(torch.rand(n1, GRID * GRID, generator=gperm), dim=-1)
b, c, h, w = xp.shape
ph, pw = h // GRID, w // GRID
patches = xp.reshape(b, c, GRID, ph, GRID, pw).permute(0, 2, 4, 1, 3, 5).reshape(b, GRID * GRID, c, ph, pw)
patches = patches[torch.arange(b).unsqueeze(-1), perm_idx]
xp = patches.reshape(b, GRID, GRID, c, ph, pw).permute(0, 3, 1, 4, 2, 5).reshape(b, c, h, w)
with torch.no_grad():
    outp = m(xp)
prob = out[ids1].softmax(1)
probp = outp.softmax(1)
cls1 = prob.argmax(1)
plpd = (torch.gather(prob, 1, cls1.reshape(-1, 1)) - torch.gather(probp, 1, cls1.reshape(-1, 1))).reshape(-1)
ids2 = torch.where(plpd > PLPD_T)
ent = ent[ids2]
plpd = plpd[ids2]
coeff = 1 / torch.exp(ent.clone().detach() - 0.4 * math.log(C)) + 1 / torch.exp(-1.0 * plpd.clone().detach())
loss = ent.mul(coeff).mean(0)
if len(ent) > 0:
    loss.backward()
    opt.step()
opt.zero_grad()
cases["deyo"] = {
    "spec": {"method": "deyo", "optimizer": {"name": "sgd", "lr": LR, "momentum": 0.9}},
    "perms": [[int(v) for v in row] for row in perm_idx.tolist()],
    "logits": flat(out),
    "kept": int(len(ent)),
    "after": affine_state(m),
}

# lame -------------------------------------------------------------------------------------


def lame(m, x, kind, knn=5, lam=1.0, max_steps=100):
    with torch.no_grad():
        feats = F.normalize(m.features(x), p=2, dim=-1)
        probas = m.fc(m.features(x)).softmax(1)
        unary = -torch.log(probas + 1e-10)
        N = feats.size(0)
        if kind == "linear":
            W = feats @ feats.t()
        else:
            dist = torch.norm(feats.unsqueeze(0) - feats.unsqueeze(1), dim=-1, p=2)
            if kind == "knn":
                idx = dist.topk(min(knn + 1, N), -1, largest=False).indices[:, 1:]
                W = torch.zeros(N, N).scatter_(-1, idx, 1.0)
            else:
                kth = dist.topk(k=min(knn, N), dim=-1, largest=False).values[:, -1]
                sigma = kth.mean()
                W = torch.exp(-dist ** 2 / (2 * sigma ** 2))
        Y = (-unary).softmax(-1)
        oldE = float("inf")
        for i in range(max_steps):
            pairwise = lam * W.matmul(Y)
            Y = (-unary + pairwise).softmax(-1)
            E = (unary * Y - lam * pairwise * Y + Y * torch.log(Y.clip(1e-20))).sum().item()
            if i > 1 and abs(E - oldE) <= 1e-8 * abs(oldE):
                break
            oldE = E
        return Y


for kind in ["rbf", "knn", "linear"]:
    cases[f"lame_{kind}"] = {
        "spec": {"method": "lame", "affinity": kind},
        "probs": flat(lame(src, x, kind)),
    }


# ---------------------------------------------------------------------------------------------
# Methods with teachers, memories and mixtures. SGD with a large step (lr 0.1) so that the
# gradients' values, not only their signs, decide the updated parameters.
CLEAN_LABELS = torch.tensor(fixture["clean_labels"])
LR2 = 0.1
PARAM_NAMES = ["c1.weight", "b1.weight", "b1.bias", "c2.weight", "b2.weight", "b2.bias", "fc.weight", "fc.bias"]


def all_params(m):
    return [getattr(getattr(m, k.split(".")[0]), k.split(".")[1]) for k in PARAM_NAMES]


def all_state(m):
    return {NAMES[k]: flat(p) for k, p in zip(PARAM_NAMES, all_params(m))}


def configure_all(m, grad=True):
    """CoTTA/RMT/PETAL's configure_model: BN on batch statistics, every weight trained."""
    configure_batch_stats(m)
    for p in m.parameters():
        p.requires_grad_(grad)
    return m


def ema(teacher, student, mt):
    with torch.no_grad():
        for t, s_ in zip(all_params(teacher), all_params(student)):
            t.data[:] = mt * t.data[:] + (1 - mt) * s_.data[:]


def soft_ce(target, logits):
    return -(target.softmax(1) * logits.log_softmax(1)).sum(1)


# Fixed "augmented" views (any images will do: both sides read them from here).
gviews = torch.Generator().manual_seed(21)
VIEWS = [(x.flip(3) * 0.9 + 0.05).clamp(0, 1), (x + 0.05 * torch.randn(x.shape, generator=gviews)).clamp(0, 1),
         x.roll(1, 2)]
fixture["views"] = [flat(v) for v in VIEWS]

# norm_alpha + core ---------------------------------------------------------------------------
m = source_model(SCALE)
for p in m.parameters():
    p.requires_grad_(False)
for p in bn_params(m):
    p.requires_grad_(True)
opt = torch.optim.SGD(bn_params(m), lr=LR2, momentum=0.9)
out = alpha_bn_forward(m, x, 0.1)
P = out.softmax(1)
M = P.t() @ P
loss = -torch.log(torch.diag(M) / M.sum(1)).mean()
loss.backward()
opt.step()
cases["norm_alpha_core"] = {
    "spec": {"method": "norm_alpha", "core": True, "optimizer": {"name": "sgd", "lr": LR2, "momentum": 0.9}},
    "logits": flat(out), "loss": loss.item(), "after": affine_state(m),
}


# cotta / petal ---------------------------------------------------------------------------------
def teacher_student_step(student, teacher, anchor, opt, xb, mt, ap, prior, restore, src_state):
    outputs = student(xb)
    with torch.no_grad():
        anchor_prob = anchor(xb).softmax(1).max(1)[0]
        standard = teacher(xb)
        outs = torch.stack([teacher(v) for v in VIEWS])
    target = outs.mean(0) if anchor_prob.mean(0) < ap else standard
    loss = soft_ce(target, outputs).mean(0)
    if prior > 0:
        for k, p in zip(PARAM_NAMES, all_params(student)):
            loss = loss + prior * ((p - src_state[k]) ** 2).sum()
    loss.backward()
    fisher = {k: p.grad.detach().clone() ** 2 for k, p in zip(PARAM_NAMES, all_params(student))}
    opt.step()
    opt.zero_grad()
    ema(teacher, student, mt)
    masks = restore(fisher)
    with torch.no_grad():
        for k, p in zip(PARAM_NAMES, all_params(student)):
            mk = masks[k].float()
            p.data = src_state[k] * mk + p.data * (1 - mk)
    return target, masks


def fresh_triplet():
    s_ = configure_all(source_model(SCALE))
    t = configure_all(source_model(SCALE), grad=False)
    a = configure_all(source_model(SCALE), grad=False)
    return s_, t, a


MT = 0.9
student, teacher, anchor = fresh_triplet()
src_state = {k: p.detach().clone() for k, p in zip(PARAM_NAMES, all_params(student))}
gmask = torch.Generator().manual_seed(13)
RST = 0.3
stoch = {k: torch.rand(p.shape, generator=gmask) < RST for k, p in zip(PARAM_NAMES, all_params(student))}
opt = torch.optim.SGD(student.parameters(), lr=LR2, momentum=0.9)
target, _ = teacher_student_step(student, teacher, anchor, opt, x, MT, 1.0, 0.0, lambda f: stoch, src_state)
cases["cotta"] = {
    "spec": {"method": "cotta", "optimizer": {"name": "sgd", "lr": LR2, "momentum": 0.9}, "mt": MT, "ap": 1.0,
             "rst": RST, "n_augmentations": len(VIEWS)},
    "masks": {NAMES[k]: [int(v) for v in m_.reshape(-1).tolist()] for k, m_ in stoch.items()},
    "logits": flat(target), "after": all_state(student), "teacher_after": all_state(teacher),
}

# perc ≥ 0.1, not 0.03: more than 3 % of the tiny model's gradients are exactly 0, so the 3 %
# quantile would be 0 and "fisher < q" would restore nothing. Among candidates, the one whose
# quantile sits farthest (relatively) from its neighbouring values, so that float rounding on
# either side cannot flip an element across it.
SPW = 0.1
MARGINS = []


def fisher_restore(f):
    allv = torch.cat([v.reshape(-1) for v in f.values()])
    q = torch.quantile(allv, PERC)
    below, above = allv[allv < q], allv[allv >= q]
    if len(below):
        MARGINS.append(float(min(q - below.max(), above.min() - q) / q))
    return {k: v < q for k, v in f.items()}


def run_petal():
    st, te, an = fresh_triplet()
    op = torch.optim.SGD(st.parameters(), lr=LR2, momentum=0.9)
    a, m1 = teacher_student_step(st, te, an, op, x, MT, 1.0, SPW, fisher_restore, src_state)
    b, _ = teacher_student_step(st, te, an, op, x2, MT, 1.0, SPW, fisher_restore, src_state)
    return st, te, a, b, m1


best_perc = None
for cand in [0.10, 0.12, 0.15, 0.18, 0.2, 0.22, 0.25, 0.3]:
    PERC = cand
    MARGINS.clear()
    run_petal()
    margin = min(MARGINS) if len(MARGINS) == 2 else 0.0
    if best_perc is None or margin > best_perc[1]:
        best_perc = (cand, margin)
PERC = best_perc[0]
MARGINS.clear()
student, teacher, t1, t2, masks1 = run_petal()
cases["petal"] = {
    "spec": {"method": "petal", "optimizer": {"name": "sgd", "lr": LR2, "momentum": 0.9}, "mt": MT, "ap": 1.0,
             "spw": SPW, "perc": PERC, "n_augmentations": len(VIEWS)},
    "restored1": int(sum(int(m_.sum()) for m_ in masks1.values())),
    "quantile_margin": best_perc[1],
    "logits": flat(t1), "logits2": flat(t2), "after": all_state(student), "teacher_after": all_state(teacher),
}

# rmt --------------------------------------------------------------------------------------------
student, teacher, _ = fresh_triplet()
with torch.no_grad():
    feats = torch.cat([student.features(clean[16 * i:16 * (i + 1)]) for i in range(4)])
protos = torch.stack([feats[CLEAN_LABELS == c].mean(0) for c in range(C)])
PROJ = 8
torch.manual_seed(3)
proj = nn.Sequential(nn.Linear(288, PROJ), nn.ReLU(), nn.Linear(PROJ, PROJ))
proj_state = {"projector.0.weight": flat(proj[0].weight), "projector.0.bias": flat(proj[0].bias),
              "projector.2.weight": flat(proj[2].weight), "projector.2.bias": flat(proj[2].bias)}
TEMP = 0.1


def supcon(features):
    b = features.shape[0]
    mask = torch.eye(b)
    v = features.shape[1]
    cf = torch.cat(torch.unbind(features, dim=1), dim=0)
    cf = F.normalize(proj(cf), p=2, dim=1)
    adc = cf @ cf.T / TEMP
    logits = adc - adc.max(1, keepdim=True)[0].detach()
    mask = mask.repeat(v, v)
    lmask = torch.scatter(torch.ones_like(mask), 1, torch.arange(b * v).view(-1, 1), 0)
    mask = mask * lmask
    exp_logits = torch.exp(logits) * lmask
    log_prob = logits - torch.log(exp_logits.sum(1, keepdim=True))
    mlpp = (mask * log_prob).sum(1) / mask.sum(1)
    return -(TEMP / TEMP) * mlpp.view(v, b).mean()


def sce(a, b):
    return -0.5 * (b.softmax(1) * a.log_softmax(1)).sum(1) - 0.5 * (a.softmax(1) * b.log_softmax(1)).sum(1)


opt = torch.optim.SGD(list(student.parameters()) + list(proj.parameters()), lr=LR2, momentum=0.9)
view = VIEWS[0]
f = student.features(x)
out = student.fc(f)
fa = student.features(view)
outa = student.fc(fa)
with torch.no_grad():
    out_ema = teacher(x)
    dist = F.cosine_similarity(protos.unsqueeze(1), f.unsqueeze(0), dim=-1)  # (C, B)
    idx = dist.argmax(0)
features = torch.cat([protos[idx].unsqueeze(1), f.unsqueeze(1), fa.unsqueeze(1)], dim=1)
loss = (0.5 * sce(out, out_ema) + 0.5 * sce(outa, out_ema)).mean(0) + supcon(features)
loss.backward()
opt.step()
ema(teacher, student, MT)
cases["rmt"] = {
    "spec": {"method": "rmt", "optimizer": {"name": "sgd", "lr": LR2, "momentum": 0.9}, "mt": MT,
             "projection_dim": PROJ, "source_samples": 64},
    "projector": proj_state,
    "logits": flat(out + out_ema), "after": all_state(student), "teacher_after": all_state(teacher),
    "projector_after": {"projector.0.weight": flat(proj[0].weight), "projector.0.bias": flat(proj[0].bias),
                        "projector.2.weight": flat(proj[2].weight), "projector.2.bias": flat(proj[2].bias)},
}

# unmix_tns --------------------------------------------------------------------------------------
K = 4
MOM = 1 - (1 - 0.1) ** (16 / 64)


class Unmix:
    def __init__(self, bn, g):
        coeff = 0.5
        self.bn = bn
        self.means = bn.running_mean.repeat(K, 1) + math.sqrt(coeff * K / (K - 1)) * bn.running_var.sqrt() * torch.randn(K, bn.running_mean.shape[0], generator=g)
        self.vars = (1 - coeff) * bn.running_var.repeat(K, 1)
        self.init = (flat(self.means), flat(self.vars))

    def __call__(self, h):
        inst_mean = h.mean((2, 3))
        inst_var = h.var((2, 3), unbiased=False)
        with torch.no_grad():
            sim = F.normalize(inst_mean, dim=1) @ F.normalize(self.means, dim=1).T
            probs = torch.softmax(sim / 0.07, dim=1)
        pm = probs.unsqueeze(-1)
        mean_mat = (1 - pm) * self.means.unsqueeze(0) + pm * inst_mean.unsqueeze(1)
        var_mat = (1 - pm) * self.vars.unsqueeze(0) + pm * inst_var.unsqueeze(1)
        mean = mean_mat.mean(1)
        var = var_mat.mean(1) + (mean_mat ** 2).mean(1) - mean_mat.mean(1) ** 2
        with torch.no_grad():
            self.means = self.means + MOM * (pm * (inst_mean.detach().unsqueeze(1) - self.means.unsqueeze(0))).mean(0)
            self.vars = self.vars + MOM * (pm * (inst_var.detach().unsqueeze(1) - self.vars.unsqueeze(0))).mean(0)
        b, c = mean.shape
        y = (h - mean.view(b, c, 1, 1)) / torch.sqrt(var.view(b, c, 1, 1) + self.bn.eps)
        return y * self.bn.weight.view(1, -1, 1, 1) + self.bn.bias.view(1, -1, 1, 1)


def unmix_forward(m, u1, u2, xb):
    h = (xb - 0.3) / 0.2
    h = F.max_pool2d(F.relu(u1(m.c1(h))), 2)
    h = F.relu(u2(m.c2(h))).flatten(1)
    return m.fc(h)


for base in [None, "tent"]:
    g = torch.Generator().manual_seed(17)
    m = source_model(SCALE)
    for p in m.parameters():
        p.requires_grad_(False)
    u1, u2 = Unmix(m.b1, g), Unmix(m.b2, g)
    init = {"features.0.0.bn": u1.init, "features.1.0.bn": u2.init}
    spec = {"method": "unmix_tns", "num_components": K}
    if base is None:
        with torch.no_grad():
            out = unmix_forward(m, u1, u2, x)
        after = None
    else:
        for p in bn_params(m):
            p.requires_grad_(True)
        opt = torch.optim.SGD(bn_params(m), lr=LR2, momentum=0.9)
        out = unmix_forward(m, u1, u2, x)
        entropy(out).mean(0).backward()
        opt.step()
        after = affine_state(m)
        spec["base"] = {"method": "tent", "optimizer": {"name": "sgd", "lr": LR2, "momentum": 0.9}}
    cases["unmix_tns" if base is None else "unmix_tns_tent"] = {
        "spec": spec, "init": init, "logits": flat(out), "after": after,
        "components_after": {"features.0.0.bn": (flat(u1.means), flat(u1.vars)),
                             "features.1.0.bn": (flat(u2.means), flat(u2.vars))},
    }

# adanpc -----------------------------------------------------------------------------------------
with torch.no_grad():
    mem = F.normalize(src.features(clean), dim=1)
    mem_labels = CLEAN_LABELS.clone()
    KNN, T_NPC, BETA = 5, 0.1, 0.5
    res = {}
    for name, xb in [("probs", x), ("probs2", x2)]:
        fq = F.normalize(src.features(xb), dim=1)
        sim = fq @ mem.T
        top, idx = sim.topk(KNN, dim=1)
        w = (top / T_NPC).softmax(1)
        votes = torch.zeros(xb.shape[0], C).scatter_add_(1, mem_labels[idx], w)
        res[name] = flat(votes)
        keep = votes.max(1)[0] >= BETA
        res["kept" if name == "probs" else "kept2"] = int(keep.sum())
        mem = torch.cat([mem, fq[keep]])
        mem_labels = torch.cat([mem_labels, votes.argmax(1)[keep]])
cases["adanpc"] = {"spec": {"method": "adanpc", "k": KNN, "temperature": T_NPC, "beta": BETA,
                            "source_samples": 64, "memory_size": 200}, **res}

# cafa -------------------------------------------------------------------------------------------
with torch.no_grad():
    fs = src.features(clean).double()
mu = torch.stack([fs[CLEAN_LABELS == c].mean(0) for c in range(C)])
xc = fs - mu[CLEAN_LABELS]
S = xc.T @ xc / fs.shape[0]
SHRINK = 0.1
lam = SHRINK * torch.trace(S) / S.shape[0]
for cov in ["shared", "diagonal"]:
    sigma_inv = torch.linalg.inv(S + lam * torch.eye(S.shape[0])) if cov == "shared" else torch.diag(1 / (torch.diag(S) + lam))
    m = configure_batch_stats(source_model(SCALE))
    opt = torch.optim.SGD(bn_params(m), lr=LR2, momentum=0.9)
    f = m.features(x)
    out = m.fc(f)
    yhat = out.argmax(1)
    v = f.double().unsqueeze(1) - mu.unsqueeze(0)
    d = torch.einsum("bcd,de,bce->bc", v, sigma_inv, v)
    loss = (torch.log(d[torch.arange(d.shape[0]), yhat]) - torch.log(d.sum(1))).mean()
    loss.float().backward()
    opt.step()
    cases["cafa" if cov == "shared" else "cafa_diagonal"] = {
        "spec": {"method": "cafa", "optimizer": {"name": "sgd", "lr": LR2, "momentum": 0.9}, "covariance": cov,
                 "shrinkage": SHRINK, "source_samples": 64},
        "logits": flat(out), "loss": loss.item(), "after": affine_state(m),
    }

os.makedirs(os.path.dirname(OUT), exist_ok=True)
with open(OUT, "w") as f:
    json.dump(fixture, f, separators=(",", ":"))
    f.write("\n")
print(f"wrote {os.path.relpath(OUT)}: classifier scale {SCALE} (entropy filter keeps {best[1]:.0%} of the batch);",
      ", ".join(f"{k}: kept {v['kept']}" for k, v in cases.items() if "kept" in v))
