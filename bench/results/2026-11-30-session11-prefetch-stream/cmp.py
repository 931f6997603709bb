import csv, sys, statistics, math
rows=[r for r in csv.DictReader(open(sys.argv[1])) if r['ok']=='1' and r['variant'] not in ('local','pull','skopeo')]
cells={}
for r in rows:
    cells.setdefault((r.get('profile',''),r['variant'],r['workload']),{}).setdefault(r['mode'],[]).append(float(r['total_s']))
modes=sorted({m for c in cells.values() for m in c})
print('cell', *modes, sep='\t')
g={m:[] for m in modes}
for k in sorted(cells):
    meds=[]
    for m in modes:
        v=cells[k].get(m,[])
        meds.append('%.2f (%s)'%(statistics.median(v),' '.join('%.2f'%x for x in v)) if v else '-')
        if v: g[m].append(math.log(statistics.median(v)))
    print(' '.join(k), *meds, sep='\t')
print('geomean', *['%.3f'%math.exp(sum(g[m])/len(g[m])) for m in modes], sep='\t')
