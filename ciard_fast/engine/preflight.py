"""Everything a run reads or writes, checked before the first teacher or student trains.

A run may train two teachers for hours before its student starts; a bad teacher file, a dataset
file that does not open, a device that is not there or an out_dir that cannot be used must stop it
before that, not after. `check_before_training` opens and checks, in order:

1. the device (`--device cuda` on a machine without one);
2. the output folder: not a file, not a comparison's folder, not locked by a live run, not holding
   a run unless `overwrite` (`engine/rundir.py`), and nothing the run reads lies where it will
   write (`overwrite` deletes the folder's run files; a teacher trained here replaces
   `<out_dir>/teachers/<kind>/`);
3. the data: the training and test files are opened and decoded (a download happens now);
4. the models: the student and the teachers built from their config fields (on the meta device:
   no memory), so a keyword value a model rejects is found now;
5. every teacher given as a file: read, and loaded into its architecture (`load_weights`, strict),
   so a truncated file or a checkpoint of another architecture is one clear error naming the
   config field.

Each check raises the same ValueError / TypeError / FileNotFoundError the later step would have
raised, only earlier. `ciard_fast.train` and `ciard_fast.compare` call it first.

`warn_unused_settings` says what the config sets that the run will not use (a teacher file for a
method that distils from no teacher), as an :class:`UnusedSettingWarning`.
"""
import os
import warnings

from ..outputs import OutputPathError, same_path
from .precision import resolve_device
from .rundir import RUN_FILES, check_run_folder

__all__ = ["check_before_training", "check_data", "check_models", "check_teacher_files", "check_reads_outside",
           "warn_unused_settings", "UnusedSettingWarning"]


class UnusedSettingWarning(UserWarning):
    """The config sets something this run does not use (it is not silently dropped)."""


def check_before_training(config, *, resuming=False, reads=()):
    """Run every check of the module docstring for `config` (a TrainConfig). `reads`: other files
    the command reads (e.g. the checkpoint being resumed). Returns None; raises on the first
    problem. Teachers are not checked when `resuming` (they come from the checkpoint)."""
    from .teachers import teacher_specs

    from .distributed import get_context

    resolve_device(config.device)
    warn_unused_settings(config)
    specs = teacher_specs(config)
    given = [spec.weights for spec in specs.values() if spec.weights]
    if get_context(config.device).is_main:
        # rank 0 alone claims folders (engine/api.py): another rank could find them already
        # locked by rank 0 for the run they train together
        check_run_folder(config.resolved_out_dir(), resuming=resuming, user_given=config.out_dir_given,
                         overwrite=config.overwrite)
    if not resuming:
        check_reads_outside(config, list(given) + list(reads))
    test = check_data(config)
    check_models(config, test.num_classes)
    if not resuming:
        check_teacher_files(config)


def check_reads_outside(config, reads):
    """No file this run reads may be one it deletes or rewrites: with `overwrite`, the run files
    of out_dir; the folder of each teacher it trains (`<out_dir>/teachers/<kind>/`); the natural
    student's folder. Raises OutputPathError naming both paths."""
    from .teachers import teacher_specs

    out_dir = config.resolved_out_dir()
    replaced = []  # (path or folder, why)
    if config.overwrite:
        replaced += [(os.path.join(out_dir, name), "overwrite=true deletes it before the run starts")
                     for name in RUN_FILES]
    for kind, spec in teacher_specs(config).items():
        if not spec.weights:
            replaced.append((os.path.join(out_dir, "teachers", kind), f"the {kind} teacher is trained there"))
    if config.compare_natural_student:
        replaced.append((os.path.join(out_dir, "natural_student"), "the natural student is trained there"))
    for read in reads:
        for target, why in replaced:
            inside = os.path.realpath(os.fspath(read)).startswith(os.path.realpath(target) + os.sep)
            if same_path(read, target) or inside:
                raise OutputPathError(f"{os.fspath(read)!r} is read by this run but lies in {target!r}, which "
                                      f"the run replaces ({why}); copy the file elsewhere or choose another out_dir")


def check_data(config):
    """Open the configured dataset's training and test files (downloading them now if needed), so
    that a missing or damaged file stops the run before anything trains. Returns the test split."""
    from ..data import load_dataset

    kwargs = dict(root=config.data_root, val_size=config.val_size, **config.dataset_args)
    load_dataset(config.dataset, split="train_full", **kwargs)
    return load_dataset(config.dataset, split="test", **kwargs)


def check_models(config, num_classes):
    """Build the student and every teacher the run trains itself from their config fields, on the
    meta device (no memory, no weights): a keyword value the model rejects (`--student_args.width
    abc`) stops the run now, not after the teachers trained."""
    import torch

    from ..models import create_model
    from .teachers import TEACHER_FIELDS, teacher_specs

    models = [("student", config.student, "student_args", config.student_args)]
    models += [(TEACHER_FIELDS[kind]["model"], spec.model, TEACHER_FIELDS[kind]["model_args"], spec.model_args)
               for kind, spec in teacher_specs(config).items()]
    for field, name, args_field, kwargs in models:
        try:
            with torch.device("meta"):
                create_model(name, num_classes=num_classes, **kwargs)
        except (TypeError, ValueError) as exc:
            raise type(exc)(f"{args_field}={kwargs!r} for {field}={name!r}: {exc}") from None


def check_teacher_files(config, kinds=None):
    """Read every teacher file the config gives for the teachers `kinds` (default: those its
    method needs) and load it into its architecture (on the CPU), under the config's own field
    names."""
    from ..data import load_dataset
    from ..models import create_model
    from .teachers import check_weights_file, load_teacher_weights, needed_teachers, teacher_spec

    kinds = needed_teachers(config.method, config.method_args) if kinds is None else kinds
    specs = {kind: teacher_spec(config, kind) for kind in kinds}
    specs = {kind: spec for kind, spec in specs.items() if spec.weights}
    if not specs:
        return
    test = load_dataset(config.dataset, split="test", root=config.data_root, val_size=config.val_size,
                        **config.dataset_args)
    for kind, spec in specs.items():
        check_weights_file(spec, config)  # missing, a folder or empty: said under the field's name
        model = create_model(spec.model, num_classes=test.num_classes, **spec.model_args)  # on the CPU
        load_teacher_weights(model, kind, spec.weights, spec.model, config)


def warn_unused_settings(config):
    """Warn (UnusedSettingWarning) about a teacher file given to a method that uses no such teacher."""
    from .teachers import TEACHER_FIELDS, needed_teachers

    needed = needed_teachers(config.method, config.method_args)
    for kind, names in TEACHER_FIELDS.items():
        path = getattr(config, names["weights"])
        if path and kind not in needed:
            uses = " and ".join(needed) if needed else "no"
            warnings.warn(f"{names['weights']}={path!r} is not used: method {config.method!r} distils from "
                          f"{uses} teacher{'s' if len(needed) != 1 else ''}, not a {kind} one, so the file is not "
                          f"read. Leave {names['weights']} out, or choose a method that uses it",
                          UnusedSettingWarning, stacklevel=4)
