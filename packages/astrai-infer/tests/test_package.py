import subprocess
import sys

import astrai_infer


def test_public_names_exist():
    assert astrai_infer.__version__ == "0.3.0"
    for name in astrai_infer.__all__:
        assert hasattr(astrai_infer, name), name


def test_import_does_not_load_server_or_data_dependencies():
    code = (
        "import sys, astrai_infer, astrai_infer.cli; "
        "print(sorted({'flask', 'pyarrow'} & set(sys.modules)))"
    )
    output = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert output.strip() == "[]"
