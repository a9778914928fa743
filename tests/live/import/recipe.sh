#!/bin/sh
# The seed report's recipe (-m string + -m recent + REJECT), as its user ran it.
IPTABLES=iptables
PORT=25
$IPTABLES -N blackchain
$IPTABLES -A INPUT -p tcp --dport ${PORT} -m recent --name blacklist --update --seconds 86400 -j DROP
$IPTABLES -A INPUT -p tcp --dport $PORT -m string --string "example.com" --algo bm -j blackchain
$IPTABLES -A blackchain -m recent --set --name blacklist -p tcp -j REJECT --reject-with tcp-reset
