"""Serve the Train LoRA tab in the browser, without the webui (the standalone app).

With --checkpoint, training and testing use that single-file SD1.x/SDXL .safetensors checkpoint
(loaded on first use); without it, the built-in tiny-sd15 demo model (random weights: the whole
workflow runs, the images are noise); --checkpoint tiny-sdxl, its SDXL twin. LoRA files go to --lora-dir.

Only the app's own page may drive it: requests from other web sites are refused (add one with
--allow-origin), and the page is served files only from the LoRA folder, the dataset and output
folders chosen in it, and its temporary folder. Relative paths typed in the page (and --lora-dir)
are taken from the folder the app is started in; the page shows the absolute path each one means.

examples:
  python -m lib_lora serve
  python -m lib_lora serve --checkpoint models/anything-v5.safetensors --lora-dir models/Lora --port 7870
"""

from __future__ import annotations

import argparse

HELP = __doc__ or ""


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--checkpoint",
        metavar="FILE",
        help="an SD1.x or SDXL .safetensors checkpoint (default: tiny-sd15 demo; tiny-sdxl: the SDXL demo)",
    )
    parser.add_argument(
        "--lora-dir", default="lora", metavar="DIR", help="where LoRA files are saved (default: ./lora)"
    )
    parser.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1; 0.0.0.0 for all)")
    parser.add_argument("--port", type=int, default=7870, help="port (default 7870)")
    parser.add_argument("--device", help="cuda, cuda:1 or cpu (default: cuda when available)")
    parser.add_argument(
        "--allow-origin", action="append", default=[], metavar="URL",
        help="also let the page at this origin (e.g. http://localhost:3000) call the app; repeatable (default: none)",
    )  # fmt: skip


def _check_port_free(host: str, port: int) -> None:
    import socket

    from lib_lora.common.errors import UserError

    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except OSError as exc:
        raise UserError(f"--host {host} cannot be used: {exc.strerror or exc}.") from None
    family, kind, proto, _, address = infos[0]
    with socket.socket(family, kind, proto) as sock:
        try:
            sock.bind(address)
        except OSError:
            raise UserError(f"Port {port} on {host} is already in use; choose another with --port.") from None


def run(args: argparse.Namespace) -> int:
    import os

    from lib_lora.common.errors import UserError

    if not 0 < args.port < 65536:
        raise UserError(f"--port {args.port} is not a valid port number (1-65535).")
    from lib_lora.standalone.security import normalize_origin

    for origin in args.allow_origin:
        try:
            normalize_origin(origin)
        except ValueError as exc:
            raise UserError(f"--allow-origin {exc}.") from None
    if os.path.exists(args.lora_dir) and not os.path.isdir(args.lora_dir):
        raise UserError(f"--lora-dir {args.lora_dir} is a file, not a folder.")
    import importlib.util

    if importlib.util.find_spec("gradio") is None:
        raise UserError(
            "The app needs gradio, which is not installed.",
            'Install the standalone extra: pip install -e ".[standalone]"',
        )
    from lib_lora.standalone.app import StandaloneHost, launch

    host = StandaloneHost(args.checkpoint, args.lora_dir, device=args.device)  # refuses a bad checkpoint now
    _check_port_free(args.host, args.port)
    os.makedirs(host.lora_dir, exist_ok=True)
    info = host.model_info()
    model = f"{info.name} ({'built-in demo model' if info.demo else info.family})"
    print(f"Train LoRA: model {model}; LoRA files go to {host.lora_dir}")
    print(f"Relative paths typed in the page are taken from {os.getcwd()}")
    print(f"Open http://{args.host}:{args.port} in your browser (Ctrl-C to quit).", flush=True)
    launch(host, args.host, args.port, block=True, quiet=True, allow_origins=args.allow_origin)
    return 0
