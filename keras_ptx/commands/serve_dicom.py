"""``serve-dicom``: a DICOM node that answers studies from a PACS with SEG and SR objects."""
from __future__ import annotations

import click

from keras_ptx.cli import command as cli_command
from keras_ptx.commands.options import engine_option
from keras_ptx.config import Tta, choices


@cli_command("serve-dicom")
@click.option("--model", "model", multiple=True, metavar="PATH",
              help="RUN_DIR, fold folder or bin/export output (a version, or the base: its "
                   "highest version; a SavedModel, or OpenVINO IR with --engine openvino), run "
                   "in this process; repeat runs for an ensemble.")
@click.option("--model-server", default=None, metavar="URL",
              help="TF Serving instead: http://host:8501/v1/models/NAME (serving_compact).")
@click.option("--tta", type=click.Choice(choices(Tta)), default=None,
              help="Test-time augmentation for a RUN_DIR [default: as bin/predict].")
@engine_option(exports=True)
@click.option("--ae-title", default="KPTX", show_default=True, help="The node's AE title.")
@click.option("--host", default="127.0.0.1", show_default=True,
              help="Address to listen on (0.0.0.0: every interface).")
@click.option("--port", type=click.IntRange(1, 65535), default=11112, show_default=True)
@click.option("--allow", multiple=True, metavar="AET",
              help="Calling AE title let in (repeat); others are refused at association.")
@click.option("--allow-any", is_flag=True, help="Let every calling AE title in.")
@click.option("--spool", required=True, type=click.Path(file_okay=False),
              help="Folder for received instances, result objects and study states (holds "
                   "PHI: files are 0600).")
@click.option("--send-to", default=None, metavar="AE@HOST:PORT",
              help="Send results by C-STORE to this AE.")
@click.option("--stow", default=None, metavar="URL",
              help="Send results by STOW-RS to this DICOMweb root instead.")
@click.option("--calling-ae", default=None,
              help="AE title the node calls the destination as [default: --ae-title].")
@click.option("--quiet", "quiet_seconds", type=float, default=10.0, show_default=True,
              help="Seconds without a new instance after which a study is answered "
                   "(its instances are predicted as they come).")
@click.option("--retention", "retention_seconds", type=float, default=0.0, show_default=True,
              help="Seconds a study's spool is kept after the destination acknowledged it.")
@click.option("--objects", default="seg,sr", show_default=True,
              help="Result objects per image: seg, sr, sc, comma-separated.")
@click.option("--tls-cert", type=click.Path(exists=True, dir_okay=False), default=None,
              help="TLS: the node's certificate (PEM); with --tls-key and --tls-ca, both the "
                   "SCP and the sender use TLS and require the peer's certificate.")
@click.option("--tls-key", type=click.Path(exists=True, dir_okay=False), default=None)
@click.option("--tls-ca", type=click.Path(exists=True, dir_okay=False), default=None)
@click.option("--max-backoff", type=float, default=60.0, show_default=True,
              help="Longest wait in seconds between two attempts to send.")
def command(model, model_server, tta, engine, ae_title, host, port, allow, allow_any, spool,
            send_to, stow, calling_ae, quiet_seconds, retention_seconds, objects, tls_cert,
            tls_key, tls_ca, max_backoff):
    """Receive studies by C-STORE, predict every frontal chest radiograph once its study is
    quiet, and send a SEG and an SR per image back (C-STORE or STOW-RS).

    Runs until SIGTERM or Ctrl-C. Progress survives a crash (SPOOL/studies/); counters are in
    SPOOL/status.json.
    """
    from keras_ptx.node.main import serve

    serve(model=model, model_server=model_server, tta=tta, engine=engine, ae_title=ae_title,
          host=host, port=port, allowed=allow, allow_any=allow_any, spool=spool,
          send_to=send_to, stow=stow, calling_ae=calling_ae, quiet_seconds=quiet_seconds,
          retention_seconds=retention_seconds, objects=objects, tls=(tls_cert, tls_key, tls_ca),
          max_backoff=max_backoff)
