"""Security shared by every role: who a caller is (``principal``) and the options that turn
authentication and authorization on (``config``). Token verification, the server
interceptors and the rules that use them build on these two modules."""
