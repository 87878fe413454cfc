#!/usr/bin/env python
"""Upload a finished model directory (weights, config, remote code, tokenizer, model card) to the Hugging Face Hub.

    python scripts/push_to_hub.py --model_dir outputs/lstm-en-de --hub_model_id your-name/lstm-attention-en-de

The directory is checked first: every file there, and loaded as a Hub user loads it (config, weights, tokenizer,
remote code and its pipeline, in a fresh process without the modeling_s2s package); then it is uploaded in one
commit; training leftovers (checkpoint-*/, runs/, optimizer states) are skipped and nothing in the directory is
changed. `--dry_run` does all the checks and uploads nothing. See `modeling_s2s.hub.push_model_dir`.
"""

from __future__ import annotations

import argparse
import sys

from modeling_s2s.hub import (
    DEFAULT_COMMIT_MESSAGE,
    HubUploadError,
    ModelDirError,
    check_model_dir_loads,
    push_model_dir,
    validate_model_dir,
)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], allow_abbrev=False)
    parser.add_argument("--model_dir", required=True, help="The model directory written by training.")
    parser.add_argument("--hub_model_id", required=True, help='Target repository, "namespace/name".')
    parser.add_argument("--private", action="store_true", help="Create the repository as private (if it is new).")
    parser.add_argument("--commit_message", default=DEFAULT_COMMIT_MESSAGE)
    parser.add_argument("--token", default=None, help="Hub token (default: the logged-in token or HF_TOKEN).")
    parser.add_argument("--revision", default=None, help="Branch to commit to (created if needed; default main).")
    parser.add_argument("--dry_run", action="store_true",
                        help="Check the directory (files, and that it loads with trust_remote_code=True in a fresh "
                             "process) and list the files; upload nothing.")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        if args.dry_run:
            files = validate_model_dir(args.model_dir)
            loaded = check_model_dir_loads(args.model_dir)
            pipelines = ", ".join(loaded["pipelines"]) or "none"
            print(f"{args.model_dir} is ready: it loads with trust_remote_code=True ({loaded['model_class']}, "
                  f"{loaded['parameters']:,} parameters, {loaded['tokenizer_class']}, pipelines: {pipelines}); "
                  f"{len(files)} files would be uploaded to {args.hub_model_id}:")
            print("\n".join(f"  {name}" for name in files))
            return 0
        url = push_model_dir(
            args.model_dir,
            args.hub_model_id,
            private=args.private,
            token=args.token,
            commit_message=args.commit_message,
            revision=args.revision,
        )
    except (ModelDirError, HubUploadError, ValueError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    print(f"Uploaded {args.model_dir} to {args.hub_model_id}: {url}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
