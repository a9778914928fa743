#!/bin/sh
ip6tables -N spam6
ip6tables -A INPUT -p tcp --dport 25 -m recent --name v6list --update --seconds 3600 --mask ffff:ffff:ffff:ffff:: -j DROP
ip6tables -A INPUT -p tcp --dport 25 -m string --string "@example.com" --algo bm -j spam6
ip6tables -A spam6 -p tcp -m recent --set --name v6list --mask ffff:ffff:ffff:ffff:: -j REJECT --reject-with tcp-reset
