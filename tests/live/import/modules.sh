#!/bin/sh
# Every supported module and option, inversions, ranges, hex strings, inserts and a policy.
iptables -N SPAM
iptables -N mail-in
iptables -P FORWARD DROP
iptables -A INPUT -p tcp -m multiport --dports 25,587,2525:2530 -m comment --comment "mail ports" -j mail-in
iptables -A mail-in -j SPAM
iptables -A SPAM -m string ! --hex-string "|40|Example|2e|com" --algo kmp --from 40 --to 1500 --icase \
    -m recent ! --rcheck --seconds 60 --reap --hitcount 3 --rttl --name x --mask 255.255.255.0 --rdest -j RETURN
iptables -A SPAM -p udp -m udp ! --sport 53 -j ACCEPT
iptables -A SPAM -p tcp -m tcp --sport 1024:65535 ! --dport 25 -j DROP
iptables -A SPAM -m string --string 'quote" and \back' --algo bm -j DROP
iptables -A SPAM -p tcp -m recent --remove --name x -j ACCEPT
iptables -I INPUT -p tcp --dport 465 -j REJECT
iptables -I INPUT 2 -p tcp -m recent ! --update --seconds 5 --name y -j REJECT --reject-with tcp-reset
iptables -w -A OUTPUT -p tcp -m multiport ! --sports 25 -m string --string "x" --algo bm --to 100 -j ACCEPT
