"""The commerge_ui app: `python app.py --help` (also the entry point of the Hugging Face Space; installed, the
same is `commerge app`). The options and what hosted mode means: commerge_ui/ui/serve.py, docs/hosting.md."""

from commerge_ui.ui.serve import main

if __name__ == "__main__":
    main()
