"""
primecount's tests: trial test cases, also collected by pytest.
"""
