"""Fault battery: bad inputs and faults thrown at every tool, each outcome classified.

    python -m pytest -q -m faults                          # every case (438; about 35 min on 2 CPU cores)
    python -m pytest -q -m faults -k "eval/ and gamma"     # cases whose id matches (ids: tool/name, see below)
    python -m pytest -q -m faults --collect-only           # the cases, not run
    python -m pytest -q -m faults --junitxml battery.xml   # a report; each case's class is a property

Not part of the default test run (the marker ``faults``, excluded like ``slow``; ``.ci/run`` runs it
as a step of its own). One test per case (``test_faults.py``), its id the case's ``tool/name`` with
every run of characters that ``-k`` cannot take (spaces, ``=``, quotes, brackets of calls) written
``_``: ``eval/model.gamma_nan``, ``train/resume_config.yaml_a_list``.

The session builds tiny random models the way ``tests/conftest.py`` does (a tiny open_clip config
registered from a JSON file, random weights saved with ``torch.save``, random heads with
``save_heads``, tiny timm teachers, a tiny DeepLab target) into a temporary folder, once
(``conftest.py``; ready-made runs are made on first use), then each case writes its synthetic
VOC-layout benchmarks and image folders into a folder of its own and runs: the tools (``demo``,
``eval``, ``train``, ``train_target``, ``app``, ``summarize``, ``benchmark``) as subprocesses,
``clip_dinoiser.load`` / ``Segmenter.segment`` and the web app's handlers in this process.
Nothing is downloaded (``HF_HUB_OFFLINE=1``); caches go to the temporary folder (kept as pytest
keeps its temporary folders; ``--basetemp`` names it).

Each case is classified (``harness.py``):

* ``ok``: the expected behaviour. A user error: exit code 2, the last stderr line starts with
  ``error: `` and names the file or key at fault, no ``Traceback``, nothing left behind. A
  signal: exit 130 (SIGINT) / 143 (SIGTERM) and one line. A valid but odd input: exit 0 and a
  correct result (e.g. results.json's mIoU equal to a numpy computation on the saved predictions).
* ``traceback``: a ``Traceback`` in stderr, or another exit code than expected (also a fault of
  the battery itself).
* ``wrong-result``: exit 0 with a wrong or missing result, a bad setting accepted, or a failed
  run that left files behind.
* ``lost``: a file that existed before the case was changed, replaced or deleted (every file of
  the case's folder and of the shared fixtures is hashed before and after each command; logs
  may only grow; the files a case is expected to write are excluded).
* ``unclear``: the message does not name the file or key at fault.

A case that is not ``ok`` fails with its class, what it found, and the command, exit code and
stderr tail of its last commands; the end of the run counts the cases of each class.
"""
