#!/bin/bash
# run command in $2 dir, sample RSS of the ortfinetune process each 0.5 s to $1.rss
name=$1; dir=$2; shift 2
cd $dir
"$@" > /tmp/ab/$name.log 2>&1 &
pid=$!
while kill -0 $pid 2>/dev/null; do
  r=$(grep VmRSS /proc/$pid/status 2>/dev/null | awk '{print $2}')
  echo "$(date +%T.%N | cut -c1-10) $r" >> /tmp/ab/$name.rss
  sleep 0.5
done
