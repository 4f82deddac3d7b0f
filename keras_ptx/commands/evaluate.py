"""``evaluate``: score a run on a TFRecord split, choose and save its post-processing."""
from __future__ import annotations

import click

from keras_ptx.cli import command as cli_command
from keras_ptx.commands.options import batch_size_option, engine_option
from keras_ptx.config import Tta, choices


@cli_command("evaluate")
@click.option("--model", "run_dir", required=True, multiple=True, metavar="RUN_DIR",
              help="Training run directory, a local path or a URL (config.yaml and "
                   "best.weights.h5), a fold folder of train-folds (evaluated out of fold) or "
                   "an ensemble folder; repeat it to evaluate an ensemble (needs --out).")
@click.option("--out", "report_to", default=None, metavar="OUT",
              help="Write the report and the chosen rule to OUT, an ensemble folder: --model "
                   "OUT in predict and export is then these models with this rule [default: "
                   "the one --model].")
@click.option("--data", "data_dir", required=True,
              help="TFRecord folder from build-tfrecords (local path or tf.io.gfile URL).")
@click.option("--split", default="val", show_default=True, help="Split to evaluate on.")
@click.option("--tta", type=click.Choice(choices(Tta)), default=None,
              help="Test-time augmentation [default: the run's eval.tta].")
@batch_size_option
@engine_option(exports=False)
@click.option("--cases", type=click.IntRange(min=0), default=4, show_default=True,
              help="Best and worst cases drawn as overlays (each).")
@click.option("--checkpoints", type=click.IntRange(min=1), default=1, show_default=True,
              help="Score each run's N best epochs averaged (RUN_DIR/top/, train.keep_best of "
                   "at least N), the ensemble predict and export then use with the same "
                   "--checkpoints; 1 = best.weights.h5.")
@click.option("--save-postprocess/--no-save-postprocess", default=None,
              help="Save the chosen rule to RUN_DIR/postprocess.json [default: only when "
                   "evaluating the val split].")
def command(run_dir, report_to, data_dir, split, tta, batch_size, engine, cases, checkpoints,
            save_postprocess):
    """Run the model over a split, search the post-processing (pixel threshold, the winner's
    triplet, gating by the image-level head) and report the competition score of each.

    Writes RUN_DIR/eval/ (report.json, report.md, plots, overlays; eval-<split>/ for another
    split) and, for the val split, saves the best rule with its TTA to RUN_DIR/postprocess.json,
    which predict and export then apply. A fold folder is scored out of fold (each image by
    the fold model that never saw it), into OUT/eval/ and OUT/postprocess.json.
    """
    from keras_ptx import rundir
    from keras_ptx.fileio import join
    from keras_ptx.inference.evaluate import evaluate
    from keras_ptx.inference.report import summary_table

    report = evaluate(run_dir, data_dir, split=split, tta=tta, batch_size=batch_size,
                      cases=cases, save_postprocess=save_postprocess, checkpoints=checkpoints,
                      report_to=report_to, engine=engine)
    click.echo(summary_table(report))
    click.echo(report["resolution"]["note"])
    home = report_to or run_dir[0]
    click.echo(f"report: {join(rundir.eval_dir(home, split), rundir.EVAL_REPORT_MD)}")
