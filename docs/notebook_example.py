# %% [markdown]
# # distland from a notebook
#
# Train a small network, then look at its loss landscape without leaving Python: a 1-D interpolation from the
# initial to the trained weights, a 2-D surface around the trained weights, plots of both, and a surface kept in a
# file that a later session resumes. Every cell runs in seconds on a laptop CPU; open this file in Jupyter or VS Code
# (the `# %%` markers are cells) or run it as a script: `python docs/notebook_example.py`.
# (tests/test_api.py runs it.)

# %%
import copy
from pathlib import Path

import torch
from torch import nn

import distland
from distland.data import load_split

torch.manual_seed(0)
train = load_split("digits", "train")     # scikit-learn's 8×8 digits as (inputs, targets) tensors
test = load_split("digits", "test")
out = Path("distland-example")
out.mkdir(exist_ok=True)

# %% [markdown]
# ## A small model, trained for a few epochs
# Any `nn.Module` works: it does not need to be importable from a module, and distland never changes it (it
# evaluates a copy).

# %%
model = nn.Sequential(nn.Flatten(), nn.Linear(64, 32), nn.ReLU(), nn.Linear(32, 10))
initial = copy.deepcopy(model)
optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
x, y = train
for epoch in range(30):
    for batch in torch.randperm(len(x)).split(128):
        optimizer.zero_grad()
        nn.functional.cross_entropy(model(x[batch]), y[batch]).backward()
        optimizer.step()
model.eval()
with torch.no_grad():
    print(f"test accuracy {100.0 * (model(test[0]).argmax(1) == test[1]).float().mean():.1f}%")

# %% [markdown]
# ## 1-D: from the initial to the trained weights
# θ(α) = θ_init + α (θ_trained − θ_init); α = 0 is the initialisation, α = 1 the trained model.

# %%
path = distland.interpolate(initial, model, {"train": train, "test": test}, grid={"x": [-0.25, 1.25, 31]})
print(path)
print("barrier on the way:", path.sharpness()["barrier"])
path.plot().savefig(out / "interpolation.png")

# %% [markdown]
# ## 2-D: the surface around the trained weights
# Two random filter-normalized directions (Li et al. 2018). `output=None` (the default) keeps the results in
# memory; `.to_xarray()` gives labelled arrays.

# %%
surface = distland.surface(model, train, grid={"x": [-1, 1, 11], "y": [-1, 1, 11]})
print(surface)
print({k: round(v, 4) for k, v in surface.sharpness().items() if k.startswith(("center_loss", "hess_eig"))})
surface.plot("contour").savefig(out / "contour.png")
surface.plot("surface3d", log=True).savefig(out / "surface3d.png")
print(surface.to_xarray())

# %% [markdown]
# ## A surface kept in a file, resumed later
# With `output=` the surface file is written as the CLI writes it. Run the same cell again — after a kernel
# restart, or after interrupting it — and it continues where it stopped (the file records the model's weights and
# the data, so it resumes only for the same ones); a finished file computes nothing.

# %%
file = out / "surface.h5"
first = distland.surface(model, train, grid={"x": [-1, 1, 11], "y": [-1, 1, 11]}, output=file, progress=False)
again = distland.surface(model, train, grid={"x": [-1, 1, 11], "y": [-1, 1, 11]}, output=file, progress=False)
print(again.summary.splitlines()[2])           # "computed 0 point(s) ..."
same = distland.read(file)                     # or read it back in another session
assert (same.train_loss == first.train_loss).all()
