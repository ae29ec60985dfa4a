"""The FC handler modules, imported from functions/ as FC imports them (handler
`backup.handler` with functions/ as the code root), and the context FC hands them."""
import importlib.util
import pathlib
from types import SimpleNamespace

FUNCTIONS = pathlib.Path(__file__).resolve().parent.parent / "functions"


def load_handler(name):
    spec = importlib.util.spec_from_file_location(f"fc_{name}", FUNCTIONS / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def fc_context(request_id="req-1", access_key_id=None, access_key_secret=None,
               security_token="", timeout=600, name="backup"):
    """The shape of FC's python3.10 context: credentials from the function's role."""
    credentials = None
    if access_key_id:
        credentials = SimpleNamespace(access_key_id=access_key_id,
                                      access_key_secret=access_key_secret,
                                      security_token=security_token)
    return SimpleNamespace(request_id=request_id, credentials=credentials, region="cn-hangzhou",
                           function=SimpleNamespace(name=name, handler=f"{name}.handler",
                                                    memory=1024, timeout=timeout),
                           service=SimpleNamespace(name="l2c-backup"))
