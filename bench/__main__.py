from __future__ import annotations

import sys

if sys.argv[1:2] == ["bridge"]:
    from bench.bridge import main as bridge_main

    bridge_main(sys.argv[2:])
elif sys.argv[1:2] == ["jobs"]:
    from bench.jobs import main as jobs_main

    jobs_main(sys.argv[2:])
elif sys.argv[1:2] == ["cluster"]:
    from bench.cluster import main as cluster_main

    cluster_main(sys.argv[2:])
else:
    from bench.run import main

    main()
