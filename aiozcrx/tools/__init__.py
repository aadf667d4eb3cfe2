"""The NIC and host tooling behind the ``aiozcrx`` command (:mod:`aiozcrx.cli`, which
sits above this and :mod:`aiozcrx.workers`): ``doctor``, ``nic``, the ethtool netlink
client and the core probe.

This subpackage must stay importable without the compiled core (the cffi module
``aiozcrx._abi`` and the C extension ``aiozcrx._fastpath``): ``aiozcrx doctor`` and
``aiozcrx nic`` have to work on a machine where the core cannot be built or loaded,
which is where they are needed most. So no module here imports the core, or anything
that imports it (``aiozcrx._kernel``, ``engines``, ``receiver``, ``transport``,
``server``, ...), at module level: :mod:`aiozcrx.tools.probe` imports it inside the
functions that use it (as do the ``demo``/``recv`` commands of :mod:`aiozcrx.cli`,
which holds to the same rule). ``tests/test_tools_without_core.py`` checks this with
the core blocked.

* :mod:`aiozcrx.tools.doctor`: ``aiozcrx doctor``, what zero copy needs here;
* :mod:`aiozcrx.tools.nic`: ``aiozcrx nic setup/teardown``, a NIC queue for zcrx;
* :mod:`aiozcrx.tools.ethtool`: ethtool generic netlink and ``SIOCETHTOOL``, standard
  library only;
* :mod:`aiozcrx.tools.probe`: what the kernel can do, asked through the core (lazily).
"""
