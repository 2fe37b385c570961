"""The method contract (method_contract.py) over every registered method and variant.

conftest.py parametrizes these tests with `list_methods()` at collection, so a method added to
the library is checked without editing this file or a list; a method a test file registers is
checked by that file (see test_contract_extensions.py).
"""
from method_contract import *  # noqa: F401,F403
