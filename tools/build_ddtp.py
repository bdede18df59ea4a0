"""Build the DDTP retrieval corpus: the command line of tools/ddtp/build.py (run with --help for the usage).

    python tools/build_ddtp.py --sample          # or, from the repository root: python -m tools.build_ddtp
"""
if __package__:  # python -m tools.build_ddtp
    from tools.ddtp.build import main
else:  # python tools/build_ddtp.py: this file's folder heads the import path, so the package is `ddtp`
    from ddtp.build import main

if __name__ == "__main__":
    main()
