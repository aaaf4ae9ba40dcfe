# The Autobahn TestSuite's own testee server (what `wstest -m testeeserver` starts: echo,
# permessage-deflate accepted, failByDrop off), on a loopback port the OS picks, for
# ci/autobahn.sh. Python 2 (the suite is Python 2 code).
#
#   python autobahn_testee.py PORT_FILE
#
# Writes the bound port to PORT_FILE once listening (written to a temporary name, then
# renamed, so a reader never sees half a number). The factory's externalPort is cleared:
# the testee otherwise refuses a handshake whose Host port is not its own, which is every
# handshake that comes through a gateway forwarding the client's Host.
# The suite's own reactor choice (epoll on Linux), as wstest makes it: must come before
# anything imports twisted.internet.reactor.
from autobahntestsuite import choosereactor  # noqa: F401  (installs the reactor)

import os
import sys

from twisted.internet import reactor
from autobahntestsuite.testee import TesteeServerFactory


def main():
    port_file = sys.argv[1]
    # The URL only names the scheme and path; the port in it is not where we listen.
    factory = TesteeServerFactory(u"ws://127.0.0.1:9001", debug=False)
    factory.externalPort = None
    listening = reactor.listenTCP(0, factory, interface="127.0.0.1")
    tmp = port_file + ".tmp"
    with open(tmp, "w") as f:
        f.write("%d\n" % listening.getHost().port)
    os.rename(tmp, port_file)
    reactor.run()


if __name__ == "__main__":
    main()
