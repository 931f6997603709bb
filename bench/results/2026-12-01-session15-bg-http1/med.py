import csv,sys,statistics as st,collections
d=collections.defaultdict(list)
for f in sys.argv[1:]:
  for r in csv.DictReader(open(f)):
    if r['ok']!='1' or r['variant']=='local': continue
    d[(r['profile'],r['workload'],r['variant'],r['mode'])].append(r)
for k,rs in sorted(d.items()):
  t=[float(r['total_s']) for r in rs]; c=[float(r['cpu_s'] or 0) for r in rs]
  b=[float(r['bytes_down'] or 0)/1e6 for r in rs]; q=[r['requests'] for r in rs]
  print(' '.join(k), f"n={len(rs)} total={st.median(t):.3f} [{' '.join('%.2f'%x for x in t)}] cpu={st.median(c):.2f} MB={st.median(b):.1f} req={q}")
